// Reading and writing safetensors files (https://huggingface.co/docs/safetensors): 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {string: string}}, then the raw data.
// The runner's state snapshots use the same file layout as runtime/session.py's, so Python and the runner can read
// each other's snapshots (runtime/runner/SERVE.md).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qwen_bench {

struct NamedTensor {
  std::string name;
  std::string dtype;  // safetensors code: F32, F16, BF16, I64, I32, I8, U8, BOOL, F64, I16
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // row-major, little-endian
};

struct SafetensorsFile {
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<NamedTensor> tensors;

  const std::string* meta(const std::string& key) const;
  const NamedTensor* tensor(const std::string& name) const;
};

// Bytes per element of a safetensors dtype code; 0 when unknown.
size_t safetensors_element_size(const std::string& dtype);
// The safetensors code of a manifest / torch dtype name ("float32" -> "F32"); empty when unknown.
std::string safetensors_dtype_of(const std::string& torch_dtype);

// Written under PATH.partial, then renamed; returns the file size. Throws std::runtime_error naming the path.
int64_t write_safetensors(const std::string& path, const SafetensorsFile& file);
// Throws std::runtime_error naming the path and what is wrong.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace qwen_bench
