#include "json.h"

#include <charconv>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace qwen_bench {

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

  Json parse_document() {
    Json v = value("");
    ws();
    if (i_ != s_.size()) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < i_ && k < s_.size(); ++k) {
      if (s_[k] == '\n') { ++line; col = 1; } else { ++col; }
    }
    throw std::runtime_error(source_ + ":" + std::to_string(line) + ":" + std::to_string(col) +
                             ": invalid JSON: " + what);
  }
  void ws() { while (i_ < s_.size() && std::strchr(" \t\r\n", s_[i_]) && s_[i_]) ++i_; }
  bool eat(char c) { ws(); if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; } return false; }
  void expect(char c) { if (!eat(c)) fail(std::string("expected '") + c + "'"); }
  bool word(const char* w) {
    size_t n = std::strlen(w);
    if (s_.compare(i_, n, w) == 0) { i_ += n; return true; }
    return false;
  }

  Json value(const std::string& path) {
    ws();
    if (i_ >= s_.size()) fail("unexpected end of input");
    char c = s_[i_];
    Json out;
    if (c == '{') {
      ++i_;
      out = Json::object();
      if (!eat('}')) {
        do {
          ws();
          std::string key = string();
          expect(':');
          out.obj_.emplace_back(key, value(path.empty() ? key : path + "." + key));
        } while (eat(','));
        expect('}');
      }
    } else if (c == '[') {
      ++i_;
      out = Json::array();
      if (!eat(']')) {
        do { out.arr_.push_back(value(path + "[" + std::to_string(out.arr_.size()) + "]")); } while (eat(','));
        expect(']');
      }
    } else if (c == '"') {
      out = Json(string());
    } else if (word("true")) {
      out = Json(true);
    } else if (word("false")) {
      out = Json(false);
    } else if (word("null")) {
      out = Json();
    } else {
      out = number();
    }
    out.path_ = path;
    return out;
  }

  Json number() {
    size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    bool integral = true;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || std::strchr(".eE+-", s_[i_]))) {
      if (std::strchr(".eE", s_[i_])) integral = false;
      ++i_;
    }
    std::string tok = s_.substr(start, i_ - start);
    if (tok.empty() || tok == "-") fail("expected a value");
    char* end = nullptr;
    double d = std::strtod(tok.c_str(), &end);
    if (*end != '\0') fail("malformed number '" + tok + "'");
    if (integral) {
      int64_t v = 0;
      auto r = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      if (r.ec == std::errc()) return Json(v);
    }
    return Json(d);
  }

  std::string string() {
    if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string");
    ++i_;
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') break;
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("short \\u escape");
          unsigned cp = static_cast<unsigned>(std::stoul(s_.substr(i_, 4), nullptr, 16));
          i_ += 4;
          // Surrogate pairs: manifests and traces are ASCII in practice, but a pair must not become garbage.
          if (cp >= 0xD800 && cp < 0xDC00 && i_ + 6 <= s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
            unsigned lo = static_cast<unsigned>(std::stoul(s_.substr(i_ + 2, 4), nullptr, 16));
            i_ += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          if (cp < 0x80) out += static_cast<char>(cp);
          else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: fail(std::string("bad escape \\") + e);
      }
    }
    return out;
  }

  const std::string& s_;
  const std::string& source_;
  size_t i_ = 0;
};

Json Json::parse(const std::string& text, const std::string& source) {
  return JsonParser(text, source).parse_document();
}

static std::runtime_error type_error(const std::string& path, const char* want) {
  return std::runtime_error("field '" + (path.empty() ? std::string("(top level)") : path) + "' must be " + want);
}

bool Json::as_bool() const { if (type_ != Type::Bool) throw type_error(path_, "a boolean"); return bool_; }
double Json::as_double() const { if (type_ != Type::Number) throw type_error(path_, "a number"); return num_; }
int64_t Json::as_int() const {
  if (type_ != Type::Number) throw type_error(path_, "an integer");
  if (is_int_) return int_;
  if (std::floor(num_) != num_) throw type_error(path_, "an integer");
  return static_cast<int64_t>(num_);
}
const std::string& Json::as_string() const {
  if (type_ != Type::String) throw type_error(path_, "a string");
  return str_;
}
const std::vector<Json>& Json::items() const {
  if (type_ != Type::Array) throw type_error(path_, "an array");
  return arr_;
}
const std::vector<std::pair<std::string, Json>>& Json::members() const {
  if (type_ != Type::Object) throw type_error(path_, "an object");
  return obj_;
}

const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& kv : obj_) if (kv.first == key) return &kv.second;
  return nullptr;
}

const Json& Json::at(const std::string& key) const {
  if (type_ != Type::Object) throw type_error(path_, "an object");
  if (const Json* v = find(key)) return *v;
  throw std::runtime_error("missing field '" + (path_.empty() ? key : path_ + "." + key) + "'");
}

Json& Json::push(Json v) {
  if (type_ == Type::Null) type_ = Type::Array;
  if (type_ != Type::Array) throw std::logic_error("Json::push on a non-array");
  arr_.push_back(std::move(v));
  return arr_.back();
}

Json& Json::set(const std::string& key, Json v) {
  if (type_ == Type::Null) type_ = Type::Object;
  if (type_ != Type::Object) throw std::logic_error("Json::set on a non-object");
  for (auto& kv : obj_) if (kv.first == key) { kv.second = std::move(v); return kv.second; }
  obj_.emplace_back(key, std::move(v));
  return obj_.back().second;
}

static void escape(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
        else out += static_cast<char>(c);
    }
  }
  out += '"';
}

void Json::dump_to(std::string& out, int indent, int depth) const {
  auto newline = [&](int d) {
    if (indent <= 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * d), ' ');
  };
  switch (type_) {
    case Type::Null: out += "null"; break;
    case Type::Bool: out += bool_ ? "true" : "false"; break;
    case Type::Number: {
      if (is_int_) { out += std::to_string(int_); break; }
      // JSON has no NaN or infinity; a measurement that produced one is reported as missing.
      if (!std::isfinite(num_)) { out += "null"; break; }
      char buf[32];
      auto r = std::to_chars(buf, buf + sizeof buf, num_);  // shortest text that round-trips
      out.append(buf, r.ptr);
      break;
    }
    case Type::String: escape(out, str_); break;
    case Type::Array: {
      // Short arrays of scalars stay on one line, so per-token lists do not take a screen each.
      bool flat = true;
      for (const auto& v : arr_) if (v.type_ == Type::Array || v.type_ == Type::Object) flat = false;
      out += '[';
      for (size_t k = 0; k < arr_.size(); ++k) {
        if (k) out += flat ? ", " : ",";
        if (!flat) newline(depth + 1);
        arr_[k].dump_to(out, indent, depth + 1);
      }
      if (!flat && !arr_.empty()) newline(depth);
      out += ']';
      break;
    }
    case Type::Object: {
      out += '{';
      for (size_t k = 0; k < obj_.size(); ++k) {
        if (k) out += ',';
        newline(depth + 1);
        escape(out, obj_[k].first);
        out += indent > 0 ? ": " : ":";
        obj_[k].second.dump_to(out, indent, depth + 1);
      }
      if (!obj_.empty()) newline(depth);
      out += '}';
      break;
    }
  }
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

}  // namespace qwen_bench
