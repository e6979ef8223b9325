// Images in a prompt (runtime/CONTRACT.md, "Images"): the manifest's `vision` section, the one image size a caller's
// pixels must match, the prompt with its one image token expanded to the image's tokens, and the three-row M-RoPE
// positions (transformers' get_rope_index, as runtime/images.py mrope_positions). No ExecuTorch here: the model calls
// live in qwen_bench.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "json.h"

namespace qwen_bench {

// The contract's image method names (runtime/contract.py; tests/runtime/test_contract.py compares the copies).
constexpr const char* kEmbedMethod = "embed_tokens";
constexpr const char* kEmbeddingsPrefillMethod = "prefill_embeddings";
constexpr const char* kRopeDecodeMethod = "decode_token_rope";
constexpr const char* kImageMethodPrefix = "encode_image_";

struct ImageSize {
  std::string method;  // encode_image_<H>x<W>
  int64_t height = 0, width = 0;
  int64_t grid_t = 1, grid_h = 0, grid_w = 0;  // patches
  int64_t tokens = 0;                           // grid_t * grid_h * grid_w / merge^2
};

struct Vision {
  int64_t image_token_id = 0, vision_start_token_id = 0, vision_end_token_id = 0;
  int64_t merge = 1;  // spatial_merge_size
  std::vector<ImageSize> images;

  // Throws std::runtime_error naming the field (`vision/images[1]/tokens: ...`).
  static Vision parse(const Json& section);
  // The entry of exactly height x width pixels; throws `<field>: ...` listing the sizes when none is.
  const ImageSize& size_for(int64_t height, int64_t width, const std::string& field) const;
  std::string sizes_text() const;  // "64x64, 48x96 (HxW)"
};

// A prompt with one image, laid out for `prefill_embeddings`: the ids with the placeholder expanded, where the image's
// rows go, and the rotary position of every token.
struct ImagePromptLayout {
  std::vector<int64_t> tokens;  // [T] ids; the image's rows hold image_token_id
  size_t image_begin = 0, image_end = 0;  // [begin, end): the rows the image's embeddings replace; empty: no image
  std::vector<int64_t> rope;      // [3, T] row-major: time, height, width
  int64_t next_rope = 0;          // the rotary position of the token after the last
};

// With `image`, `ids` from index `first_searched` on (the caller's prompt; earlier ids, e.g. a pending token, are text
// whatever their value) must hold exactly one vision.image_token_id, which becomes image->tokens rows; without, every
// id is text. Positions start at `rope_start`. Errors start with `field`.
ImagePromptLayout layout_image_prompt(const Vision& v, const std::vector<int64_t>& ids, size_t first_searched,
                                      const ImageSize* image, int64_t rope_start, const std::string& field);

// RFC 4648 base64 (padding required, no whitespace); throws std::runtime_error naming `field`.
std::vector<uint8_t> base64_decode(const std::string& text, const std::string& field);

}  // namespace qwen_bench
