#include "image_prompt.h"

#include <algorithm>
#include <stdexcept>

namespace qwen_bench {

namespace {

int64_t positive(const Json& section, const std::string& path, const std::string& key, int64_t lo) {
  const Json* v = section.find(key);
  if (!v || !v->is_number()) throw std::runtime_error("field '" + path + "/" + key + "': required integer");
  const int64_t n = v->as_int();
  if (n < lo) throw std::runtime_error("field '" + path + "/" + key + "': must be >= " + std::to_string(lo));
  return n;
}

}  // namespace

Vision Vision::parse(const Json& section) {
  if (!section.is_object()) throw std::runtime_error("field 'vision': expected an object");
  Vision v;
  v.image_token_id = positive(section, "vision", "image_token_id", 0);
  v.vision_start_token_id = positive(section, "vision", "vision_start_token_id", 0);
  v.vision_end_token_id = positive(section, "vision", "vision_end_token_id", 0);
  v.merge = positive(section, "vision", "spatial_merge_size", 1);
  const Json* methods = section.find("methods");
  if (!methods || !methods->is_object()) throw std::runtime_error("field 'vision/methods': required object");
  const std::pair<const char*, const char*> names[] = {
      {"embed", kEmbedMethod}, {"prefill", kEmbeddingsPrefillMethod}, {"decode", kRopeDecodeMethod}};
  for (const auto& kv : names) {
    const Json* m = methods->find(kv.first);
    if (!m || !m->is_string() || m->as_string() != kv.second)
      throw std::runtime_error(std::string("field 'vision/methods/") + kv.first + "': this qwen-bench runs '" +
                               kv.second + "'");
  }
  const Json* images = section.find("images");
  if (!images || !images->is_array() || images->items().empty())
    throw std::runtime_error("field 'vision/images': required, at least one size");
  for (size_t i = 0; i < images->items().size(); ++i) {
    const Json& e = images->items()[i];
    const std::string path = "vision/images[" + std::to_string(i) + "]";
    ImageSize s;
    s.height = positive(e, path, "height", 1);
    s.width = positive(e, path, "width", 1);
    s.tokens = positive(e, path, "tokens", 1);
    const Json* method = e.find("method");
    const std::string want = std::string(kImageMethodPrefix) + std::to_string(s.height) + "x" + std::to_string(s.width);
    if (!method || !method->is_string() || method->as_string() != want)
      throw std::runtime_error("field '" + path + "/method': expected '" + want + "' for its height and width");
    s.method = want;
    const Json* grid = e.find("grid_thw");
    if (!grid || !grid->is_array() || grid->items().size() != 3)
      throw std::runtime_error("field '" + path + "/grid_thw': expected [t, h, w]");
    s.grid_t = grid->items()[0].as_int();
    s.grid_h = grid->items()[1].as_int();
    s.grid_w = grid->items()[2].as_int();
    if (s.grid_t != 1 || s.grid_h < v.merge || s.grid_w < v.merge || s.grid_h % v.merge || s.grid_w % v.merge)
      throw std::runtime_error("field '" + path + "/grid_thw': a single frame whose rows and columns are multiples "
                               "of spatial_merge_size " + std::to_string(v.merge) + " expected");
    if (s.tokens != s.grid_h * s.grid_w / (v.merge * v.merge))
      throw std::runtime_error("field '" + path + "/tokens': " + std::to_string(s.tokens) + ", but grid_thw gives " +
                               std::to_string(s.grid_h * s.grid_w / (v.merge * v.merge)));
    v.images.push_back(std::move(s));
  }
  return v;
}

std::string Vision::sizes_text() const {
  std::string s;
  for (const auto& i : images) s += (s.empty() ? "" : ", ") + std::to_string(i.height) + "x" + std::to_string(i.width);
  return s + " (HxW)";
}

const ImageSize& Vision::size_for(int64_t height, int64_t width, const std::string& field) const {
  for (const auto& i : images)
    if (i.height == height && i.width == width) return i;
  throw std::runtime_error(field + ": an image of " + std::to_string(height) + "x" + std::to_string(width) +
                           " (HxW) pixels; this bundle encodes " + sizes_text() + " only: resize it to the size "
                           "runtime/CONTRACT.md's rule picks (runtime/images.py choose_image_size)");
}

ImagePromptLayout layout_image_prompt(const Vision& v, const std::vector<int64_t>& ids, size_t first_searched,
                                      const ImageSize* image, int64_t rope_start, const std::string& field) {
  size_t mark = ids.size();
  if (image) {
    size_t marks = 0;
    for (size_t i = first_searched; i < ids.size(); ++i)
      if (ids[i] == v.image_token_id) {
        if (!marks++) mark = i;
      }
    if (marks != 1)
      throw std::runtime_error(field + ": " + std::to_string(marks) + " image tokens (" +
                               std::to_string(v.image_token_id) + ") for one image: mark its place with exactly one, "
                               "inside vision_start (" + std::to_string(v.vision_start_token_id) + ") and vision_end (" +
                               std::to_string(v.vision_end_token_id) + "); the runner expands it to the image's " +
                               std::to_string(image->tokens) + " tokens");
  }
  ImagePromptLayout l;
  const size_t n_image = image ? static_cast<size_t>(image->tokens) : 0;
  const size_t total = ids.size() + n_image - (image ? 1 : 0);
  l.tokens.reserve(total);
  std::vector<int64_t> t, h, w;  // the three rows, [T] each
  t.reserve(total);
  h.reserve(total);
  w.reserve(total);
  int64_t p = rope_start;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i != mark) {
      l.tokens.push_back(ids[i]);
      t.push_back(p);
      h.push_back(p);
      w.push_back(p);
      ++p;
      continue;
    }
    // The k-th image token sits at row k / (gw/m), column k % (gw/m) of the merged grid: (p, p + row, p + column).
    const int64_t gh = image->grid_h / v.merge, gw = image->grid_w / v.merge;
    l.image_begin = l.tokens.size();
    for (int64_t k = 0; k < gh * gw; ++k) {
      l.tokens.push_back(v.image_token_id);
      t.push_back(p);
      h.push_back(p + k / gw);
      w.push_back(p + k % gw);
    }
    l.image_end = l.tokens.size();
    p += std::max(gh, gw);
  }
  l.rope.reserve(3 * total);
  for (const auto* row : {&t, &h, &w}) l.rope.insert(l.rope.end(), row->begin(), row->end());
  l.next_rope = p;
  return l;
}

std::vector<uint8_t> base64_decode(const std::string& text, const std::string& field) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4)
    throw std::runtime_error(field + ": not base64 (" + std::to_string(text.size()) + " characters, not a multiple "
                             "of 4)");
  std::vector<uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int q[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + k];
      const bool last_quad = i + 4 == text.size();
      if (c == '=' && last_quad && k >= 2 && (k == 3 || text[i + 3] == '=')) {
        q[k] = 0;
        ++pad;
        continue;
      }
      q[k] = pad ? -1 : value(c);
      if (q[k] < 0)
        throw std::runtime_error(field + ": not base64 (character " + std::to_string(i + k) + ")");
    }
    const uint32_t bits = (static_cast<uint32_t>(q[0]) << 18) | (static_cast<uint32_t>(q[1]) << 12) |
                          (static_cast<uint32_t>(q[2]) << 6) | static_cast<uint32_t>(q[3]);
    out.push_back(static_cast<uint8_t>(bits >> 16));
    if (pad < 2) out.push_back(static_cast<uint8_t>(bits >> 8));
    if (pad < 1) out.push_back(static_cast<uint8_t>(bits));
  }
  return out;
}

}  // namespace qwen_bench
