// SHA-256 (FIPS 180-4), for checking model.pte against manifest.json and computing the bundle hash the bench
// schema asks for, without an OpenSSL dependency the phone builds would have to carry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace qwen_bench {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::string hex();  // finalises; the object is spent afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const std::string& data);
// Throws std::runtime_error naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace qwen_bench
