// A small JSON value with a strict parser and a writer: enough for manifest.json, power traces and the bench
// output. The runner must build for Android and iOS from this folder alone, so it carries no third-party JSON
// library.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace qwen_bench {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::Bool), bool_(b) {}
  Json(double d) : type_(Type::Number), num_(d) {}
  Json(int v) : type_(Type::Number), num_(v), int_(v), is_int_(true) {}
  Json(int64_t v) : type_(Type::Number), num_(static_cast<double>(v)), int_(v), is_int_(true) {}
  Json(uint64_t v) : Json(static_cast<int64_t>(v)) {}
  Json(const char* s) : type_(Type::String), str_(s) {}
  Json(std::string s) : type_(Type::String), str_(std::move(s)) {}

  static Json array() { Json j; j.type_ = Type::Array; return j; }
  static Json object() { Json j; j.type_ = Type::Object; return j; }
  // Throws std::runtime_error naming `source`, the line and the column.
  static Json parse(const std::string& text, const std::string& source);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  bool as_bool() const;
  double as_double() const;
  int64_t as_int() const;  // throws unless the number is integral
  const std::string& as_string() const;
  const std::vector<Json>& items() const;
  const std::vector<std::pair<std::string, Json>>& members() const;

  const Json* find(const std::string& key) const;  // nullptr when absent (or not an object)
  // Member access that throws naming the dotted path when absent: `at("program").at("methods")`.
  const Json& at(const std::string& key) const;

  Json& push(Json v);                      // arrays
  Json& set(const std::string& key, Json v);  // objects: replaces an existing key, else appends (order kept)

  std::string dump(int indent = 2) const;

 private:
  void dump_to(std::string& out, int indent, int depth) const;

  Type type_ = Type::Null;
  bool bool_ = false;
  double num_ = 0;
  int64_t int_ = 0;
  bool is_int_ = false;
  std::string str_;
  std::vector<Json> arr_;
  std::vector<std::pair<std::string, Json>> obj_;
  std::string path_;  // for error messages from at()
  friend class JsonParser;
};

}  // namespace qwen_bench
