// qwen-bench: run a qwen-mobile bundle's model.pte natively (prefill through `forward`, greedy decode through
// `decode_token`) with our qwen35 kernels, and print the result in the bench schema
// (runtime/schemas/bench.schema.json).
//
//   qwen-bench --bundle DIR [--prompt-ids 1,2,3 | --prompt-len 128[,512] --seed 0] [--gen 64] [--runs 5]
//              [--warmup 1] [--threads N] [--json OUT] [--dump-logits OUT.bin] [--power-root /] ...
//   qwen-bench --power-replay TRACE.jsonl [--json OUT]
//
// Options are documented in runtime/README.md ("Native runner") and by --help.
#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/core/portable_type/tensor_impl.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/runtime.h>
#if QWEN_BENCH_HAVE_ETDUMP
#include <executorch/devtools/etdump/etdump_flatcc.h>
#endif
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "json.h"
#include "power.h"
#include "sha256.h"

#ifndef QWEN_BENCH_VERSION
#define QWEN_BENCH_VERSION "0.1.0"
#endif
#ifndef QWEN_BENCH_ET_VERSION
#define QWEN_BENCH_ET_VERSION "unknown"
#endif

// The wheel ships libexecutorch_threadpool.so but not its header; these are the two members we call, declared as
// upstream's extension/threadpool/threadpool.h declares them (same mangled names, so they link to the wheel's).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

// From our kernel library (runtime/kernels/register_executorch.cpp). Calling it also keeps the library linked.
extern "C" int32_t qwen35_et_kernel_registered(void);
// From our kernel library (runtime/kernels/xnnpack_options.cpp): one packed copy of each XNNPACK weight for both methods.
extern "C" int qwen35_xnnpack_set_weight_cache(int enabled);

namespace qwen_bench {
namespace {

namespace et = ::executorch::runtime;
using ::executorch::aten::ScalarType;
using ::executorch::aten::TensorImpl;
using clock_type = std::chrono::steady_clock;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The bundle contract (runtime/schemas/manifest.schema.json; export/lowering.py DECODE_METHOD). Version 1 named the
// one-token method `decode`, which ExecuTorch 1.5's stock LLM runner runs on memory it does not share with `forward`.
constexpr int64_t kManifestVersion = 2;
constexpr const char* kDecodeMethod = "decode_token";

// ---- options --------------------------------------------------------------------------------------------------

struct Options {
  std::string bundle;
  std::vector<int64_t> prompt_ids;
  std::vector<int64_t> prompt_lens;
  uint64_t seed = 0;
  int64_t gen = 64;
  int runs = 5;
  int warmup = 1;
  int threads = 0;  // 0: the thread pool's default (one per core)
  int64_t prefill_chunk = 0;
  bool stop_at_stop_ids = false;
  bool verify = true;
  std::string json_out;
  std::string dump_logits;
  std::string etdump;
  std::string power_root = "/";
  double power_hz = 10;
  double idle_seconds = 5;
  bool no_power = false;
  std::string power_log;
  std::string power_replay;
  CurrentUnit current_unit = CurrentUnit::Auto;
  int emulated = -1;  // -1: detect
  bool unshared_arenas = false;
};

const char* kUsage = R"(usage: qwen-bench --bundle DIR [options]
       qwen-bench --power-replay TRACE.jsonl [--json OUT] [--current-unit auto|ua|ma]

Runs a qwen-mobile bundle's model.pte with ExecuTorch and the qwen35 kernels: prefill through `forward`, greedy
(argmax) decode through `decode_token`, and prints the result as bench-schema JSON
(runtime/schemas/bench.schema.json).

prompt and generation
  --bundle DIR          bundle folder (manifest.json + model.pte)
  --prompt-ids 1,2,3    one prompt given as token ids
  --prompt-len N[,M..]  random prompts of these lengths, ids from --seed S (default 0) + length
                        (default: the manifest's sample_prompt, else one random prompt of 128)
  --gen N               tokens to generate per run, the first from prefill (default 64)
  --stop                stop a run at the manifest's stop ids (default: always generate --gen tokens)
  --prefill-chunk N     most tokens per `forward` call (default and maximum: the manifest's forward.max_tokens)
  --runs N              measured runs per prompt (default 5)
  --warmup N            unmeasured runs before them (default 1)
  --threads N           ExecuTorch thread pool size (default: the pool's default)
  --no-verify           skip checking model.pte's sha256 against the manifest
output
  --json OUT            write the JSON there (default: stdout)
  --dump-logits OUT     raw float32 logits [gen, vocab] of the first measured run of the first prompt
  --etdump OUT          also record an ETDump: the time of every operator and delegate call of every method call
                        (warmups included), for `python bench/etdump_summary.py OUT` or ExecuTorch's Inspector.
                        Profiling adds a little time per call, so compare speeds from runs without it
power (Android adb shell, Linux phones)
  --power-root DIR      sysfs root to sample (default /; tests use a fake tree)
  --power-hz HZ         sampling rate (default 10)
  --idle-seconds S      idle baseline measured before the runs (default 5)
  --no-power            do not sample
  --power-log FILE      write the raw samples (JSON lines) for --power-replay
  --power-replay FILE   compute the energy report of a recorded trace and exit
  --current-unit U      auto (default), ua or ma: the unit of current_now
  --emulated yes|no     override the qemu detection recorded in device.emulated
)";

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno) throw Failure(flag + ": '" + item + "' is not an integer");
    out.push_back(v);
  }
  if (out.empty()) throw Failure(flag + ": needs at least one value");
  return out;
}

int64_t parse_int(const std::string& flag, const std::string& s, int64_t lo) {
  const auto v = parse_int_list(flag, s);
  if (v.size() != 1 || v[0] < lo)
    throw Failure(flag + ": expected one integer >= " + std::to_string(lo) + ", got '" + s + "'");
  return v[0];
}

double parse_double(const std::string& flag, const std::string& s, double lo) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !(v >= lo))
    throw Failure(flag + ": expected a number >= " + std::to_string(lo) + ", got '" + s + "'");
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Failure(a + ": missing value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
    else if (a == "--bundle") o.bundle = value();
    else if (a == "--prompt-ids") o.prompt_ids = parse_int_list(a, value());
    else if (a == "--prompt-len") o.prompt_lens = parse_int_list(a, value());
    else if (a == "--seed") o.seed = static_cast<uint64_t>(parse_int(a, value(), 0));
    else if (a == "--gen") o.gen = parse_int(a, value(), 0);
    else if (a == "--runs") o.runs = static_cast<int>(parse_int(a, value(), 1));
    else if (a == "--warmup") o.warmup = static_cast<int>(parse_int(a, value(), 0));
    else if (a == "--threads") o.threads = static_cast<int>(parse_int(a, value(), 1));
    else if (a == "--prefill-chunk") o.prefill_chunk = parse_int(a, value(), 1);
    else if (a == "--stop") o.stop_at_stop_ids = true;
    else if (a == "--no-verify") o.verify = false;
    else if (a == "--json") o.json_out = value();
    else if (a == "--dump-logits") o.dump_logits = value();
    else if (a == "--etdump") {
      o.etdump = value();
#if !QWEN_BENCH_HAVE_ETDUMP
      throw Failure("--etdump: this qwen-bench was built without ExecuTorch's etdump library "
                    "(executorch::etdump was not found at configure time)");
#endif
    }
    else if (a == "--power-root") o.power_root = value();
    else if (a == "--power-hz") o.power_hz = parse_double(a, value(), 0.1);
    else if (a == "--idle-seconds") o.idle_seconds = parse_double(a, value(), 0);
    else if (a == "--no-power") o.no_power = true;
    else if (a == "--power-log") o.power_log = value();
    else if (a == "--power-replay") o.power_replay = value();
    else if (a == "--current-unit") {
      const std::string u = value();
      if (u == "auto") o.current_unit = CurrentUnit::Auto;
      else if (u == "ua") o.current_unit = CurrentUnit::MicroAmp;
      else if (u == "ma") o.current_unit = CurrentUnit::MilliAmp;
      else throw Failure("--current-unit: expected auto, ua or ma, got '" + u + "'");
    } else if (a == "--emulated") {
      const std::string u = value();
      if (u != "yes" && u != "no") throw Failure("--emulated: expected yes or no, got '" + u + "'");
      o.emulated = u == "yes";
    } else if (a == "--unshared-arenas") {
      // Test hook: give each method its own arenas, which must break decode-after-prefill (tests/native).
      o.unshared_arenas = true;
    } else {
      throw Failure("unknown option '" + a + "' (see --help)");
    }
  }
  if (!o.power_replay.empty()) return o;
  if (o.bundle.empty()) throw Failure("--bundle DIR is required (see --help)");
  if (!o.prompt_ids.empty() && !o.prompt_lens.empty()) throw Failure("give --prompt-ids or --prompt-len, not both");
  for (auto n : o.prompt_lens) if (n < 1) throw Failure("--prompt-len: lengths must be >= 1");
  return o;
}

// ---- small helpers --------------------------------------------------------------------------------------------

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string first_line_of(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) {
      auto p = line.find(':');
      if (p == std::string::npos) continue;
      std::string v = line.substr(p + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "";
}

std::string read_file_or_empty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string s;
  if (in) std::getline(in, s, '\0');  // device-tree strings end in NUL
  return s;
}

// getprop's output, run directly rather than through popen(): a glibc build run from `adb shell` would look for
// /bin/sh, which Android does not have.
std::string getprop(const char* key) {
  int fds[2];
  if (pipe(fds) != 0) return "";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl("/system/bin/getprop", "getprop", key, static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  if (pid > 0) waitpid(pid, nullptr, 0);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

double now_s(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

int64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  long long pages_total = 0, pages_rss = 0;
  if (!(in >> pages_total >> pages_rss)) return -1;
  return pages_rss * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
  return buf;
}

// Linear-interpolated percentile, numpy's default, as runtime/bench.py computes it.
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  if (v.size() == 1) return v[0];
  const double pos = (v.size() - 1) * q / 100.0;
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

Json stats(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  Json s = Json::object();
  s.set("median", percentile(v, 50));
  s.set("p10", percentile(v, 10));
  s.set("p90", percentile(v, 90));
  s.set("mean", sum / v.size());
  s.set("min", *std::min_element(v.begin(), v.end()));
  s.set("max", *std::max_element(v.begin(), v.end()));
  return s;
}

// ---- device ---------------------------------------------------------------------------------------------------

Json device_info(int emulated_override) {
  utsname u{};
  uname(&u);
  const std::string arch = u.machine;
  const bool android = access("/system/bin/getprop", X_OK) == 0;
  std::string model, os = std::string(u.sysname) + " " + u.release;
  if (android) {
    model = getprop("ro.product.manufacturer") + " " + getprop("ro.product.model");
    os = "Android " + getprop("ro.build.version.release") + " (Linux " + u.release + ")";
  } else {
    std::string dt = read_file_or_empty("/sys/firmware/devicetree/base/model");
    model = dt.empty() ? arch + " host" : dt;
  }
  std::string cpu = first_line_of("/proc/cpuinfo", "model name");
  if (cpu.empty()) cpu = first_line_of("/proc/cpuinfo", "Hardware");
  // qemu-user reports the guest's machine in uname() but passes the host's /proc/cpuinfo through, so an aarch64
  // binary that reads an x86 cpuinfo is being emulated: its timings are not the device's.
  bool emulated = false;
#if defined(__aarch64__) || defined(__arm__)
  const std::string vendor = first_line_of("/proc/cpuinfo", "vendor_id");
  emulated = !vendor.empty() || cpu.find("Intel") != std::string::npos || cpu.find("AMD") != std::string::npos;
#endif
  if (emulated_override >= 0) emulated = emulated_override == 1;
  Json d = Json::object();
  d.set("model", model);
  d.set("os", os);
  d.set("arch", arch);
  d.set("cpu", cpu.empty() ? Json() : Json(cpu));
  d.set("cores", static_cast<int64_t>(sysconf(_SC_NPROCESSORS_ONLN)));
  const std::string mem = first_line_of("/proc/meminfo", "MemTotal");
  d.set("ram_bytes", mem.empty() ? Json() : Json(static_cast<int64_t>(std::atoll(mem.c_str())) * 1024));
  d.set("emulated", emulated);
  return d;
}

// ---- the program ----------------------------------------------------------------------------------------------

std::string et_error(et::Error e) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", static_cast<unsigned>(e));
  return std::string(et::to_string(e)) + " (" + buf + ")";
}

// Which library registers each kernel namespace a manifest may list, for the error when one is missing.
const char* provider_of(const std::string& ns) {
  if (ns == "aten" || ns == "dim_order_ops") return "libexecutorch_kernels_optimized (executorch::kernels_optimized)";
  if (ns == "executorch_prim") return "libexecutorch (executorch::runtime)";
  if (ns == "qwen35") return "our libqwen35_ops (runtime/CMakeLists.txt target qwen35_ops)";
  if (ns == "quantized_decomposed") return "libexecutorch_kernels_quantized (executorch::kernels_quantized)";
  return "a kernel library this runner does not link";
}

void check_kernel_namespaces(const Json& manifest) {
  std::set<std::string> registered;
  const auto kernels = et::get_registered_kernels();
  for (size_t i = 0; i < kernels.size(); ++i) {
    const std::string name = kernels[i].name_ ? kernels[i].name_ : "";
    const auto p = name.find("::");
    if (p != std::string::npos) registered.insert(name.substr(0, p));
  }
  bool have_ours = false;
  for (size_t i = 0; i < kernels.size(); ++i)
    if (kernels[i].name_ && std::strcmp(kernels[i].name_, "qwen35::gated_delta_rule.out") == 0) have_ours = true;
  if (!have_ours || !qwen35_et_kernel_registered())
    throw Failure("qwen35::gated_delta_rule.out is not registered: libqwen35_ops did not load or another library "
                  "registered the name first");
  for (const auto& ns : manifest.at("program").at("kernel_namespaces").items()) {
    if (!registered.count(ns.as_string()))
      throw Failure("manifest.json program.kernel_namespaces lists '" + ns.as_string() +
                    "' but no kernel of that namespace is registered in this runner; it comes from " +
                    provider_of(ns.as_string()));
  }
}

class Program {
 public:
  Program(const std::string& pte, bool shared_arenas) : loader_(load(pte)) {
    // Before any method loads: XNNPACK reads the option at delegate init. Without it forward and decode each pack
    // their own copy of every weight.
    if (int err = qwen35_xnnpack_set_weight_cache(1))
      throw Failure("the XNNPACK backend refused weight_cache_enabled (ExecuTorch error " + std::to_string(err) +
                    "); is executorch::backend_xnnpack linked?");
    auto program = et::Program::load(&loader_, et::Program::Verification::InternalConsistency);
    if (!program.ok()) throw Failure(pte + ": not a loadable ExecuTorch program: " + et_error(program.error()));
    program_ = std::make_unique<et::Program>(std::move(program.get()));
    pte_ = pte;
    shared_ = shared_arenas;
    // `forward` and `decode_token` read and write the same state buffers (exported with share_mutable_buffers=True):
    // the memory plan gives each state buffer the same arena and offset in every method, so the state is shared only
    // if every method is handed the same arenas. Size each arena to the largest any method needs, as the Python
    // Program API does (Module without share_memory_arenas gives each method its own, and decode then starts from
    // an empty state). Activations live in the same arenas; methods never run concurrently, and outputs are copied
    // out before another method runs.
    for (size_t m = 0; m < program_->num_methods(); ++m) {
      const char* name = program_->get_method_name(m).get();
      auto meta = program_->method_meta(name);
      if (!meta.ok()) throw Failure(pte + ": method '" + name + "': no metadata: " + et_error(meta.error()));
      for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
        const size_t n = static_cast<size_t>(meta->memory_planned_buffer_size(i).get());
        if (arena_sizes_.size() <= i) arena_sizes_.resize(i + 1, 0);
        arena_sizes_[i] = std::max(arena_sizes_[i], n);
      }
    }
    if (shared_) arenas_ = make_arenas();
  }

  et::MethodMeta meta(const char* name) const {
    auto m = program_->method_meta(name);
    if (!m.ok()) throw Failure(pte_ + ": has no method '" + name + "' (" + et_error(m.error()) + ")");
    return m.get();
  }

  et::Method& load_method(const char* name, et::EventTracer* tracer = nullptr) {
    const et::MethodMeta mm = meta(name);
    for (size_t b = 0; b < mm.num_backends(); ++b) {
      const char* backend = mm.get_backend_name(b).get();
      if (!et::get_backend_class(backend))
        throw Failure(pte_ + ": method '" + name + "' is delegated to backend '" + backend +
                      "', which is not registered in this runner (link its executorch::backend_* library)");
    }
    auto slot = std::make_unique<Slot>();
    if (!shared_) slot->own_arenas = make_arenas();
    auto& arenas = shared_ ? arenas_ : slot->own_arenas;
    for (auto& a : arenas) slot->spans.emplace_back(a.data(), a.size());
    slot->planned = std::make_unique<et::HierarchicalAllocator>(
        et::Span<et::Span<uint8_t>>(slot->spans.data(), slot->spans.size()));
    slot->memory = std::make_unique<et::MemoryManager>(&slot->method_allocator, slot->planned.get(), &temp_allocator_);
    auto method = program_->load_method(name, slot->memory.get(), tracer);
    if (!method.ok()) {
      if (method.error() == et::Error::OperatorMissing)
        throw Failure(pte_ + ": method '" + name + "' needs an operator that no linked kernel library provides "
                      "(the 'Missing operator' line above names it); refusing to run without it");
      throw Failure(pte_ + ": loading method '" + name + "' failed: " + et_error(method.error()));
    }
    slot->method = std::make_unique<et::Method>(std::move(method.get()));
    slots_.push_back(std::move(slot));
    return *slots_.back()->method;
  }

  size_t arena_bytes() const {
    size_t n = 0;
    for (auto s : arena_sizes_) n += s;
    return n;
  }

 private:
  struct Slot {
    ::executorch::extension::MallocMemoryAllocator method_allocator;
    std::vector<std::vector<uint8_t>> own_arenas;
    std::vector<et::Span<uint8_t>> spans;
    std::unique_ptr<et::HierarchicalAllocator> planned;
    std::unique_ptr<et::MemoryManager> memory;
    std::unique_ptr<et::Method> method;
  };

  static ::executorch::extension::MmapDataLoader load(const std::string& pte) {
    using ::executorch::extension::MmapDataLoader;
    auto l = MmapDataLoader::from(pte.c_str(), MmapDataLoader::MlockConfig::NoMlock);
    if (!l.ok()) throw Failure(pte + ": cannot open (" + et_error(l.error()) + ")");
    return std::move(l.get());
  }

  std::vector<std::vector<uint8_t>> make_arenas() const {
    std::vector<std::vector<uint8_t>> a;
    for (auto n : arena_sizes_) a.emplace_back(n, 0);
    return a;
  }

  ::executorch::extension::MmapDataLoader loader_;
  std::unique_ptr<et::Program> program_;
  std::string pte_;
  bool shared_ = true;
  std::vector<size_t> arena_sizes_;
  std::vector<std::vector<uint8_t>> arenas_;
  ::executorch::extension::MallocMemoryAllocator temp_allocator_;
  std::vector<std::unique_ptr<Slot>> slots_;
};

// Feeds token ids through a method's (tokens [1,T] int64, input_pos [T] int64) inputs and copies the logits of the
// last position out before anything else can run in the shared arenas.
class LmMethod {
 public:
  LmMethod(et::Method& m, const char* name, int64_t vocab) : m_(m), name_(name), vocab_(vocab) {}

  void run(const int64_t* ids, int64_t n, int64_t start_pos, std::vector<float>& logits) {
    tokens_.assign(ids, ids + n);
    pos_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos_[i] = start_pos + i;
    TensorImpl::SizesType tok_sizes[2] = {1, static_cast<TensorImpl::SizesType>(n)};
    TensorImpl::DimOrderType tok_order[2] = {0, 1};
    TensorImpl::StridesType tok_strides[2] = {static_cast<TensorImpl::StridesType>(n), 1};
    TensorImpl::SizesType pos_sizes[1] = {static_cast<TensorImpl::SizesType>(n)};
    TensorImpl::DimOrderType pos_order[1] = {0};
    TensorImpl::StridesType pos_strides[1] = {1};
    TensorImpl tok(ScalarType::Long, 2, tok_sizes, tokens_.data(), tok_order, tok_strides);
    TensorImpl pos(ScalarType::Long, 1, pos_sizes, pos_.data(), pos_order, pos_strides);
    check(m_.set_input(et::EValue(::executorch::aten::Tensor(&tok)), 0), "setting input 0 (tokens)");
    check(m_.set_input(et::EValue(::executorch::aten::Tensor(&pos)), 1), "setting input 1 (input_pos)");
    check(m_.execute(), "execute");
    const et::EValue& out = m_.get_output(0);
    if (!out.isTensor()) throw Failure(std::string("method '") + name_ + "': output 0 is not a tensor");
    const auto& t = out.toTensor();
    if (t.scalar_type() != ScalarType::Float || t.numel() < vocab_ || t.numel() % vocab_)
      throw Failure(std::string("method '") + name_ + "': output 0 is not float32 logits of vocab " +
                    std::to_string(vocab_));
    const float* last = t.const_data_ptr<float>() + (t.numel() - vocab_);
    logits.assign(last, last + vocab_);
  }

 private:
  void check(et::Error e, const char* what) {
    if (e != et::Error::Ok) throw Failure(std::string("method '") + name_ + "': " + what + " failed: " + et_error(e));
  }
  et::Method& m_;
  const char* name_;
  int64_t vocab_;
  std::vector<int64_t> tokens_, pos_;
};

int64_t argmax(const std::vector<float>& v) {
  // First maximum, as torch.argmax picks; a NaN anywhere is an error rather than a token.
  int64_t best = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(v[i])) throw Failure("logits contain NaN at index " + std::to_string(i));
    if (v[i] > v[best]) best = static_cast<int64_t>(i);
  }
  return best;
}

// ---- the benchmark --------------------------------------------------------------------------------------------

struct RunOut {
  double ttft_s = 0, prefill_s = 0, decode_s = 0;
  std::vector<double> step_s;
  std::vector<int64_t> ids;
};

struct Bundle {
  std::string dir, pte;
  Json manifest;
  std::string hash;
  int64_t bytes = 0, vocab = 0, max_seq_len = 0, max_prefill = 0;
  std::set<int64_t> stop_ids;
};

Bundle open_bundle(const Options& o) {
  Bundle b;
  b.dir = o.bundle;
  const std::string mpath = b.dir + "/manifest.json";
  if (access(mpath.c_str(), R_OK) != 0) throw Failure(b.dir + ": no readable manifest.json; not a qwen-mobile bundle");
  b.manifest = Json::parse(read_file(mpath), mpath);
  const Json& m = b.manifest;
  try {
    if (m.at("format").as_string() != "qwen-mobile-bundle") throw Failure("format 'qwen-mobile-bundle' expected");
    if (const int64_t v = m.at("schema_version").as_int(); v != kManifestVersion)
      throw Failure("manifest schema_version " + std::to_string(v) + ", this qwen-bench reads version " +
                    std::to_string(kManifestVersion) + "; re-export the bundle with this version");
    b.pte = b.dir + "/" + m.at("program").at("file").as_string();
    b.vocab = m.at("model").at("config").at("vocab_size").as_int();
    b.max_seq_len = m.at("state").at("max_seq_len").as_int();
    b.max_prefill = m.at("program").at("methods").at("forward").at("max_tokens").as_int();
    for (const auto& s : m.at("tokenizer").at("stop_ids").items()) b.stop_ids.insert(s.as_int());
    // The bundle identity (runtime/bundle.py bundle_hash): sha256 of "name:sha256;" over the sorted file entries.
    std::vector<std::pair<std::string, std::string>> files;
    for (const auto& kv : m.at("files").members()) {
      files.emplace_back(kv.first, kv.second.at("sha256").as_string());
      b.bytes += kv.second.at("bytes").as_int();
    }
    std::sort(files.begin(), files.end());
    std::string joined;
    for (const auto& f : files) joined += f.first + ":" + f.second + ";";
    b.hash = sha256_hex(joined);
    if (o.verify) {
      for (const auto& kv : m.at("files").members()) {
        const std::string path = b.dir + "/" + kv.first;
        if (access(path.c_str(), R_OK) != 0) throw Failure(path + ": listed in manifest.json but missing");
        if (sha256_file(path) != kv.second.at("sha256").as_string())
          throw Failure(path + ": sha256 does not match manifest.json (modified or corrupt; --no-verify to run "
                        "anyway)");
      }
    }
  } catch (const std::runtime_error& e) {
    throw Failure(mpath + ": " + e.what());
  }
  return b;
}

int run_replay(const Options& o) {
  PowerTrace t = read_trace(o.power_replay);
  Json e = summarize_energy(t, o.current_unit);
  const std::string text = e.dump() + "\n";
  if (o.json_out.empty()) std::fputs(text.c_str(), stdout);
  else { std::ofstream(o.json_out) << text; }
  return 0;
}

int run_bench(const Options& o) {
  const auto t_start = clock_type::now();
  Bundle b = open_bundle(o);
  const Json& m = b.manifest;

  et::runtime_init();
  check_kernel_namespaces(m);
  auto* pool = ::executorch::extension::threadpool::get_threadpool();
  if (o.threads > 0 && pool && !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(o.threads)))
    throw Failure("--threads " + std::to_string(o.threads) + ": the ExecuTorch thread pool refused the size");
  const int64_t threads = pool ? static_cast<int64_t>(pool->get_thread_count()) : 1;

  // Prompts and bounds first: a bad request fails before the model loads.
  const int64_t chunk = o.prefill_chunk ? o.prefill_chunk : b.max_prefill;
  if (chunk > b.max_prefill)
    throw Failure("--prefill-chunk " + std::to_string(chunk) + " exceeds the forward method's max_tokens " +
                  std::to_string(b.max_prefill));
  std::vector<std::vector<int64_t>> prompts;
  std::string prompt_source;
  if (!o.prompt_ids.empty()) {
    prompts.push_back(o.prompt_ids);
    prompt_source = "token ids from --prompt-ids";
  } else if (o.prompt_lens.empty() && m.find("sample_prompt") != nullptr) {
    // No prompt asked for: the manifest's sample prompt, the one the export verification ran.
    std::vector<int64_t> ids;
    for (const auto& t : m.at("sample_prompt").at("ids").items()) ids.push_back(t.as_int());
    prompts.push_back(std::move(ids));
    prompt_source = "the manifest's sample_prompt";
  } else {
    const std::vector<int64_t> lens = o.prompt_lens.empty() ? std::vector<int64_t>{128} : o.prompt_lens;
    for (auto len : lens) {
      // Seeded per length as runtime/bench.py does (seed + length); the generator differs from torch's, so the
      // ids differ from the host runner's.
      std::mt19937_64 rng(o.seed + static_cast<uint64_t>(len));
      std::uniform_int_distribution<int64_t> dist(0, b.vocab - 1);
      std::vector<int64_t> ids(static_cast<size_t>(len));
      for (auto& t : ids) {
        t = dist(rng);
        if (b.stop_ids.count(t)) t = (t + 1) % b.vocab;
      }
      prompts.push_back(std::move(ids));
    }
    prompt_source = "random token ids (std::mt19937_64), seed " + std::to_string(o.seed) + " + prompt length";
  }
  for (const auto& p : prompts) {
    for (auto t : p)
      if (t < 0 || t >= b.vocab)
        throw Failure("--prompt-ids: token " + std::to_string(t) + " is outside the vocabulary 0.." +
                      std::to_string(b.vocab - 1));
    if (static_cast<int64_t>(p.size()) + o.gen > b.max_seq_len)
      throw Failure("prompt of " + std::to_string(p.size()) + " tokens + --gen " + std::to_string(o.gen) +
                    " does not fit the bundle's context of " + std::to_string(b.max_seq_len) + " tokens");
  }

  const auto t_load = clock_type::now();
  Program program(b.pte, !o.unshared_arenas);
  et::EventTracer* tracer = nullptr;
#if QWEN_BENCH_HAVE_ETDUMP
  // One generator for both methods: each execute() opens its own event block, in call order.
  std::unique_ptr<::executorch::etdump::ETDumpGen> etdump;
  if (!o.etdump.empty()) {
    etdump = std::make_unique<::executorch::etdump::ETDumpGen>();
    tracer = etdump.get();
  }
#endif
  LmMethod forward(program.load_method("forward", tracer), "forward", b.vocab);
  LmMethod decode(program.load_method(kDecodeMethod, tracer), kDecodeMethod, b.vocab);
  const double load_ms = now_s(t_load) * 1e3;
  const int64_t load_rss = rss_bytes();

  // Power: an idle baseline first, then warmups (ignored) and measured runs.
  std::unique_ptr<PowerSampler> sampler;
  std::string power_why;
  if (!o.no_power) sampler = PowerSampler::open(o.power_root, o.power_hz, &power_why);
  if (sampler) {
    sampler->set_phase("idle");
    sampler->start();
    std::this_thread::sleep_for(std::chrono::duration<double>(o.idle_seconds));
  }

  std::vector<float> logits;
  std::vector<float> dumped;
  bool dumping = !o.dump_logits.empty();
  auto one_run = [&](const std::vector<int64_t>& prompt, bool dump) {
    RunOut r;
    const auto t0 = clock_type::now();
    for (size_t i = 0; i < prompt.size(); i += static_cast<size_t>(chunk)) {
      const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(prompt.size() - i));
      forward.run(prompt.data() + i, n, static_cast<int64_t>(i), logits);  // position 0 resets the state in-graph
    }
    r.prefill_s = now_s(t0);
    r.ttft_s = r.prefill_s;
    int64_t pos = static_cast<int64_t>(prompt.size());
    for (int64_t k = 0; k < o.gen; ++k) {
      if (dump) dumped.insert(dumped.end(), logits.begin(), logits.end());
      const int64_t tok = argmax(logits);
      if (k == 0) r.ttft_s = now_s(t0);
      r.ids.push_back(tok);
      if ((o.stop_at_stop_ids && b.stop_ids.count(tok)) || k == o.gen - 1) break;
      const auto t1 = clock_type::now();
      decode.run(&tok, 1, pos++, logits);
      const double dt = now_s(t1);
      r.step_s.push_back(dt);
      r.decode_s += dt;
    }
    return r;
  };

  Json results = Json::array();
  Json notes = Json::array();
  int64_t run_tokens = 0;
  double run_wall_s = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    if (sampler) sampler->set_phase("warmup");
    for (int w = 0; w < o.warmup; ++w) one_run(prompts[p], false);
    if (sampler) sampler->set_phase("run");
    std::vector<RunOut> outs;
    const auto t_runs = clock_type::now();
    for (int r = 0; r < o.runs; ++r) {
      outs.push_back(one_run(prompts[p], dumping && p == 0 && r == 0));
      run_tokens += static_cast<int64_t>(outs.back().ids.size());
    }
    run_wall_s += now_s(t_runs);
    bool identical = true;
    for (const auto& r : outs) identical &= r.ids == outs[0].ids;
    if (!identical) {
      std::fprintf(stderr, "qwen-bench: warning: runs of the %zu-token prompt produced different tokens; the state "
                   "may not be reset by a prefill at position 0\n", prompts[p].size());
      notes.push("runs of the " + std::to_string(prompts[p].size()) + "-token prompt produced different tokens");
    }
    std::vector<double> ttft, pre, dec;
    Json samples = Json::array();
    for (const auto& r : outs) {
      const double pre_tps = r.prefill_s > 0 ? prompts[p].size() / r.prefill_s : 0.0;
      const Json dec_tps = r.step_s.empty() ? Json() : Json(r.step_s.size() / r.decode_s);
      ttft.push_back(r.ttft_s * 1e3);
      pre.push_back(pre_tps);
      if (!r.step_s.empty()) dec.push_back(r.step_s.size() / r.decode_s);
      Json s = Json::object();
      s.set("ttft_ms", r.ttft_s * 1e3);
      s.set("prefill_tok_s", pre_tps);
      s.set("decode_tok_s", dec_tps);
      s.set("generated_tokens", static_cast<int64_t>(r.ids.size()));
      Json steps = Json::array();
      for (double d : r.step_s) steps.push(std::round(d * 1e7) / 1e4);  // ms, 4 decimals as runtime/bench.py
      s.set("decode_ms_per_token", std::move(steps));
      samples.push(std::move(s));
    }
    Json res = Json::object();
    res.set("prompt_tokens", static_cast<int64_t>(prompts[p].size()));
    res.set("generate_tokens", o.gen);
    res.set("ttft_ms", stats(ttft));
    res.set("prefill_tok_s", stats(pre));
    res.set("decode_tok_s", dec.empty() ? Json() : stats(dec));
    res.set("samples", std::move(samples));
    // Beyond the schema: the ids themselves, for parity checks against Python and across architectures.
    Json pids = Json::array(), gids = Json::array();
    for (auto t : prompts[p]) pids.push(t);
    for (auto t : outs[0].ids) gids.push(t);
    res.set("prompt_ids", std::move(pids));
    res.set("generated_ids", std::move(gids));
    res.set("runs_identical", identical);
    results.push(std::move(res));
  }

  Json energy;  // null unless sampled
  if (sampler) {
    PowerTrace trace = sampler->stop();
    trace.tokens = run_tokens;
    trace.run_wall_s = run_wall_s;
    if (!o.power_log.empty()) write_trace(o.power_log, trace);
    energy = summarize_energy(trace, o.current_unit);
  } else if (!o.no_power) {
    notes.push("energy not sampled: " + power_why);
  }

#if QWEN_BENCH_HAVE_ETDUMP
  if (etdump) {
    const ::executorch::etdump::ETDumpResult dump = etdump->get_etdump_data();
    if (dump.buf == nullptr || dump.size == 0) throw Failure(o.etdump + ": the ETDump is empty");
    const std::string tmp = o.etdump + ".partial";
    {
      std::ofstream f(tmp, std::ios::binary);
      f.write(static_cast<const char*>(dump.buf), static_cast<std::streamsize>(dump.size));
      if (!f) throw Failure(o.etdump + ": cannot write the ETDump");
    }
    free(dump.buf);
    if (std::rename(tmp.c_str(), o.etdump.c_str()) != 0) throw Failure(o.etdump + ": cannot rename " + tmp);
    notes.push("ETDump recorded (" + o.etdump + "): timings include the profiler's overhead");
  }
#endif

  if (dumping) {
    std::ofstream f(o.dump_logits, std::ios::binary);
    f.write(reinterpret_cast<const char*>(dumped.data()), static_cast<std::streamsize>(dumped.size() * sizeof(float)));
    if (!f) throw Failure(o.dump_logits + ": cannot write the logits dump");
  }

  Json device = device_info(o.emulated);
  if (device.at("emulated").as_bool()) notes.push("emulated (qemu): timings are not performance");
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);

  const Json& recipe = m.at("recipe");
  Json out = Json::object();
  out.set("schema_version", 1);
  out.set("format", "qwen-mobile-bench");
  Json producer = Json::object();
  producer.set("name", "qwen-bench");
  producer.set("version", QWEN_BENCH_VERSION);
  producer.set("runtime", std::string("executorch ") + QWEN_BENCH_ET_VERSION + " C++ (Program API, shared arenas)");
  out.set("producer", std::move(producer));
  out.set("created_utc", utc_now());
  out.set("device", std::move(device));
  Json bundle = Json::object();
  bundle.set("hash", b.hash);
  bundle.set("path", b.dir);
  bundle.set("model_id", m.at("model").at("id").as_string());
  const Json* size = m.at("model").find("size");
  bundle.set("model_size", size && size->is_string() ? *size : Json());
  bundle.set("params", m.at("model").at("params").as_int());
  bundle.set("backend", recipe.find("backend") ? recipe.at("backend").as_string() : recipe.at("name").as_string());
  bundle.set("recipe", recipe.at("name").as_string());
  bundle.set("qlinear", recipe.at("qlinear").as_string());
  bundle.set("qembedding", recipe.at("qembedding").as_string());
  bundle.set("group_size", recipe.find("group_size") ? Json(recipe.at("group_size").as_int()) : Json());
  bundle.set("bytes", b.bytes);
  out.set("bundle", std::move(bundle));
  Json settings = Json::object();
  Json lens = Json::array();
  for (const auto& p : prompts) lens.push(static_cast<int64_t>(p.size()));
  settings.set("prompt_lengths", std::move(lens));
  settings.set("generate_tokens", o.gen);
  settings.set("runs", o.runs);
  settings.set("warmup", o.warmup);
  settings.set("threads", threads);
  settings.set("prefill_chunk", chunk);
  settings.set("prompt_source", prompt_source);
  settings.set("stop_at_stop_ids", o.stop_at_stop_ids);
  out.set("settings", std::move(settings));
  out.set("results", std::move(results));
  Json memory = Json::object();
  memory.set("peak_rss_bytes", static_cast<int64_t>(ru.ru_maxrss) * 1024);
  memory.set("load_rss_bytes", load_rss >= 0 ? Json(load_rss) : Json());
  memory.set("load_ms", load_ms);
  memory.set("planned_arena_bytes", static_cast<int64_t>(program.arena_bytes()));
  out.set("memory", std::move(memory));
  out.set("energy", std::move(energy));
  out.set("notes", std::move(notes));
  out.set("wall_seconds", now_s(t_start));

  const std::string text = out.dump() + "\n";
  if (o.json_out.empty()) {
    std::fputs(text.c_str(), stdout);
  } else {
    std::ofstream f(o.json_out);
    f << text;
    if (!f) throw Failure(o.json_out + ": cannot write");
    for (size_t i = 0; i < out.at("results").items().size(); ++i) {
      const Json& r = out.at("results").items()[i];
      const std::string decode =
          r.at("decode_tok_s").is_null() ? "-" : std::to_string(r.at("decode_tok_s").at("median").as_double());
      std::fprintf(stderr, "prompt %lld: TTFT %.2f ms, prefill %.1f tok/s, decode %s tok/s (median)\n",
                   static_cast<long long>(r.at("prompt_tokens").as_int()), r.at("ttft_ms").at("median").as_double(),
                   r.at("prefill_tok_s").at("median").as_double(), decode.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace qwen_bench

int main(int argc, char** argv) {
  try {
    const qwen_bench::Options o = qwen_bench::parse_args(argc, argv);
    return o.power_replay.empty() ? qwen_bench::run_bench(o) : qwen_bench::run_replay(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qwen-bench: error: %s\n", e.what());
    return 1;
  }
}
