#include "safetensors.h"

#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "json.h"

namespace qwen_bench {

namespace {
struct DtypeName {
  const char* code;
  const char* torch;
  size_t bytes;
};
constexpr DtypeName kDtypes[] = {
    {"F32", "float32", 4}, {"F16", "float16", 2}, {"BF16", "bfloat16", 2}, {"F64", "float64", 8},
    {"I64", "int64", 8},   {"I32", "int32", 4},   {"I16", "int16", 2},     {"I8", "int8", 1},
    {"U8", "uint8", 1},    {"BOOL", "bool", 1},
};
}  // namespace

size_t safetensors_element_size(const std::string& dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.code) return d.bytes;
  return 0;
}

std::string safetensors_dtype_of(const std::string& torch_dtype) {
  for (const auto& d : kDtypes)
    if (torch_dtype == d.torch) return d.code;
  return "";
}

const std::string* SafetensorsFile::meta(const std::string& key) const {
  for (const auto& kv : metadata)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const NamedTensor* SafetensorsFile::tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

int64_t write_safetensors(const std::string& path, const SafetensorsFile& file) {
  Json header = Json::object();
  if (!file.metadata.empty()) {
    Json meta = Json::object();
    for (const auto& kv : file.metadata) meta.set(kv.first, kv.second);
    header.set("__metadata__", std::move(meta));
  }
  uint64_t offset = 0;
  for (const auto& t : file.tensors) {
    size_t numel = 1;
    for (auto d : t.shape) numel *= static_cast<size_t>(d);
    const size_t elem = safetensors_element_size(t.dtype);
    if (elem == 0) throw std::runtime_error(path + ": tensor '" + t.name + "': unknown dtype " + t.dtype);
    if (numel * elem != t.data.size())
      throw std::runtime_error(path + ": tensor '" + t.name + "' holds " + std::to_string(t.data.size()) +
                               " bytes, its shape needs " + std::to_string(numel * elem));
    Json info = Json::object();
    info.set("dtype", t.dtype);
    Json shape = Json::array();
    for (auto d : t.shape) shape.push(d);
    info.set("shape", std::move(shape));
    Json offsets = Json::array();
    offsets.push(static_cast<int64_t>(offset));
    offsets.push(static_cast<int64_t>(offset + t.data.size()));
    info.set("data_offsets", std::move(offsets));
    header.set(t.name, std::move(info));
    offset += t.data.size();
  }
  std::string text = header.dump(0);
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as safetensors' writer pads
  const std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(path + ": cannot write (" + tmp + " cannot be created)");
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xFF);
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : file.tensors)
      f.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename " + tmp + " to it");
  }
  return static_cast<int64_t>(8 + text.size() + offset);
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  f.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  uint8_t len[8];
  if (size < 8 || !f.read(reinterpret_cast<char*>(len), 8))
    throw std::runtime_error(path + ": not a safetensors file (shorter than its 8-byte header length)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  if (n > size - 8 || n > (100u << 20))
    throw std::runtime_error(path + ": not a safetensors file (header length " + std::to_string(n) +
                             " does not fit the file of " + std::to_string(size) + " bytes)");
  std::string text(static_cast<size_t>(n), '\0');
  f.read(&text[0], static_cast<std::streamsize>(n));
  Json header;
  try {
    header = Json::parse(text, path + " (safetensors header)");
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("not a safetensors file: ") + e.what());
  }
  if (!header.is_object()) throw std::runtime_error(path + ": the safetensors header is not a JSON object");
  const uint64_t data_size = size - 8 - n;
  SafetensorsFile out;
  for (const auto& kv : header.members()) {
    if (kv.first == "__metadata__") {
      for (const auto& m : kv.second.members()) out.metadata.emplace_back(m.first, m.second.as_string());
      continue;
    }
    NamedTensor t;
    t.name = kv.first;
    try {
      t.dtype = kv.second.at("dtype").as_string();
      for (const auto& d : kv.second.at("shape").items()) t.shape.push_back(d.as_int());
      const auto& off = kv.second.at("data_offsets").items();
      if (off.size() != 2) throw std::runtime_error("data_offsets must hold two numbers");
      const int64_t begin = off[0].as_int(), end = off[1].as_int();
      const size_t elem = safetensors_element_size(t.dtype);
      if (elem == 0) throw std::runtime_error("unknown dtype " + t.dtype);
      size_t numel = 1;
      for (auto d : t.shape) {
        if (d < 0) throw std::runtime_error("negative dimension");
        numel *= static_cast<size_t>(d);
      }
      if (begin < 0 || end < begin || static_cast<uint64_t>(end) > data_size ||
          static_cast<size_t>(end - begin) != numel * elem)
        throw std::runtime_error("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                 "] do not match its shape and dtype within " + std::to_string(data_size) +
                                 " data bytes");
      t.data.resize(static_cast<size_t>(end - begin));
      f.seekg(static_cast<std::streamoff>(8 + n + static_cast<uint64_t>(begin)));
      if (!f.read(reinterpret_cast<char*>(t.data.data()), static_cast<std::streamsize>(t.data.size())))
        throw std::runtime_error("cannot read its data");
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(path + ": tensor '" + t.name + "': " + e.what());
    }
    out.tensors.push_back(std::move(t));
  }
  return out;
}

}  // namespace qwen_bench
