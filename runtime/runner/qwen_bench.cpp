// qwen-bench: run a qwen-mobile bundle's model.pte natively (prefill through `forward`, greedy decode through
// `decode_token`) with our qwen35 kernels, and print the result in the bench schema
// (runtime/schemas/bench.schema.json); or, with --serve, load the bundle once and answer JSON-lines requests
// (generate with the portable sampling rule, bench, reset, snapshot save/load) on stdin, for the Android app.
//
//   qwen-bench --bundle DIR [--prompt-ids 1,2,3 | --prompt-len 128[,512] --seed 0] [--gen 64] [--runs 5]
//              [--warmup 1] [--threads N] [--json OUT] [--dump-logits OUT.bin] [--power-root /] ...
//   qwen-bench --bundle DIR --image RGB_FILE --image-size HxW [--prompt-ids ...]   (a bundle with a vision section)
//   qwen-bench --serve --bundle DIR [--threads N] [--no-verify]
//   qwen-bench --power-replay TRACE.jsonl [--json OUT]
//
// Options are documented in runtime/README.md ("Native runner") and by --help; the serve protocol in
// runtime/runner/SERVE.md.
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
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "image_prompt.h"
#include "json.h"
#include "power.h"
#include "safetensors.h"
#include "sampling.h"
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

// The bundle contract (runtime/contract.py, runtime/CONTRACT.md; tests/runtime/test_contract.py compares these copies).
// Version 1 named the one-token method `decode`, which ExecuTorch 1.5's stock LLM runner runs on memory it does not
// share with `forward`.
constexpr int64_t kManifestVersion = 2;
constexpr const char* kPrefillMethod = "forward";
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
  bool serve = false;
  std::string image_file;  // raw RGB, rows top to bottom
  int64_t image_height = 0, image_width = 0;
  bool print_positions = false;
  bool no_image_rows = false;
};

const char* kUsage = R"(usage: qwen-bench --bundle DIR [options]
       qwen-bench --serve --bundle DIR [--threads N] [--no-verify]
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
images (bundles exported with a vision tower: runtime/CONTRACT.md, "Images")
  --image FILE          raw RGB pixels (3 bytes per pixel, rows top to bottom, no header) of exactly one of the
                        manifest's vision.images sizes: resize first (the rule: runtime/images.py choose_image_size)
  --image-size HxW      its height x width in pixels, e.g. 448x448 (as encode_image_<H>x<W> names it)
                        The prompt marks the image's place with ONE image token (vision.image_token_id, inside
                        vision_start/vision_end), which the runner expands to the image's tokens; without
                        --prompt-ids the prompt is that span followed by the manifest's sample prompt. The report
                        adds image_encode_ms; ttft_ms includes the encode
  --no-image-rows       skip the report's `images` rows, which a bundle with a vision section gets by default: per
                        image size, the encode and the time to first token of the synthetic test card + 16 text
                        tokens (runtime/bench.py's rows; warmups and runs as for the prompts)
  --print-positions     print the expanded prompt and its 3-row M-RoPE positions for --image-size as JSON and exit
                        (runs nothing; for checking the position rule)
serve (the Android app's engine)
  --serve               load the bundle once, then answer JSON-lines requests on stdin (generate, bench, reset,
                        save, load, info, cancel, quit) with JSON lines on stdout: runtime/runner/SERVE.md
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
    else if (a == "--serve") o.serve = true;
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
    } else if (a == "--image") o.image_file = value();
    else if (a == "--image-size") {
      const std::string v = value();
      const auto x = v.find('x');
      char* end = nullptr;
      const long long h = x == std::string::npos ? 0 : std::strtoll(v.substr(0, x).c_str(), &end, 10);
      const bool h_ok = end && *end == '\0' && x > 0;
      const long long w = x == std::string::npos ? 0 : std::strtoll(v.substr(x + 1).c_str(), &end, 10);
      if (!h_ok || *end != '\0' || x + 1 >= v.size() || h < 1 || w < 1)
        throw Failure("--image-size: expected HxW in pixels (height x width, e.g. 448x448), got '" + v + "'");
      o.image_height = h;
      o.image_width = w;
    } else if (a == "--print-positions") o.print_positions = true;
    else if (a == "--no-image-rows") o.no_image_rows = true;
    else if (a == "--unshared-arenas") {
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
  if (o.serve) {
    // Per-run settings travel in the requests; a flag that would be silently ignored is refused.
    const std::pair<bool, const char*> bench_only[] = {
        {!o.prompt_ids.empty(), "--prompt-ids"}, {!o.prompt_lens.empty(), "--prompt-len"},
        {!o.json_out.empty(), "--json"}, {!o.dump_logits.empty(), "--dump-logits"}, {!o.etdump.empty(), "--etdump"},
        {!o.power_log.empty(), "--power-log"}, {o.unshared_arenas, "--unshared-arenas"},
        {!o.image_file.empty(), "--image"}, {o.image_height > 0, "--image-size"},
        {o.print_positions, "--print-positions"}, {o.no_image_rows, "--no-image-rows"}};
    for (const auto& f : bench_only)
      if (f.first)
        throw Failure(std::string("--serve: ") + f.second + " is a benchmark-mode option; send the settings in a "
                      "request instead (runtime/runner/SERVE.md)");
    return o;
  }
  if (!o.image_file.empty() && o.image_height == 0)
    throw Failure("--image: give its size with --image-size HxW (raw RGB carries none)");
  if (o.image_height > 0 && o.image_file.empty() && !o.print_positions)
    throw Failure("--image-size: needs --image FILE (or --print-positions)");
  if (o.print_positions && o.image_height == 0) throw Failure("--print-positions: needs --image-size HxW");
  if (o.image_height > 0 && !o.prompt_lens.empty())
    throw Failure("--prompt-len: random prompts have no image token; with --image give --prompt-ids holding one, "
                  "or none (the image span + the manifest's sample prompt)");
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

  bool has_method(const char* name) const { return program_->method_meta(name).ok(); }

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

// A contiguous tensor over caller-owned memory, for a method input; it must outlive the execute() that reads it (an
// input that is not memory-planned is used in place).
class HostTensor {
 public:
  HostTensor(ScalarType type, std::initializer_list<int64_t> shape, const void* data) {
    for (auto d : shape) sizes_.push_back(static_cast<TensorImpl::SizesType>(d));
    strides_.resize(sizes_.size());
    TensorImpl::StridesType stride = 1;
    for (size_t d = sizes_.size(); d-- > 0;) {
      strides_[d] = stride;
      stride *= sizes_[d];
    }
    for (size_t d = 0; d < sizes_.size(); ++d) order_.push_back(static_cast<TensorImpl::DimOrderType>(d));
    impl_ = std::make_unique<TensorImpl>(type, static_cast<ssize_t>(sizes_.size()), sizes_.data(),
                                         const_cast<void*>(data), order_.data(), strides_.data());
  }
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;
  et::EValue value() const { return et::EValue(::executorch::aten::Tensor(impl_.get())); }

 private:
  std::vector<TensorImpl::SizesType> sizes_;
  std::vector<TensorImpl::DimOrderType> order_;
  std::vector<TensorImpl::StridesType> strides_;
  std::unique_ptr<TensorImpl> impl_;
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

// ---- the bundle -----------------------------------------------------------------------------------------------

struct StateBuffer {
  std::string name, dtype;  // dtype as the manifest names it ("float32")
  std::vector<int64_t> shape;
  int seq_axis = -1;  // the axis that grows with the position (KV caches); -1: whole (conv, recurrent states)
  size_t bytes = 0;
};

struct Bundle {
  std::string dir, pte;
  Json manifest;
  std::string hash;
  int64_t bytes = 0, vocab = 0, max_seq_len = 0, max_prefill = 0;
  std::set<int64_t> stop_ids;
  std::vector<int64_t> stop_ids_in_order;
  std::vector<StateBuffer> buffers;  // manifest state.buffers: the state_read / state_write layout
  // Bundles with image methods only (manifest `vision`).
  std::optional<Vision> vision;
  int64_t hidden = 0;             // model.config.hidden_size: the width of embed_tokens' and the image's rows
  int64_t max_embed_tokens = 0;   // most tokens per embed_tokens / prefill_embeddings call
};

// A method's max_tokens from the manifest when it lists one, else `fallback`.
int64_t method_max_tokens(const Json& manifest, const char* method, int64_t fallback) {
  const Json* m = manifest.at("program").at("methods").find(method);
  const Json* n = m ? m->find("max_tokens") : nullptr;
  return n && n->is_number() ? n->as_int() : fallback;
}

Bundle open_bundle(const std::string& dir, bool verify) {
  Bundle b;
  b.dir = dir;
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
    b.max_prefill = m.at("program").at("methods").at(kPrefillMethod).at("max_tokens").as_int();
    for (const auto& s : m.at("tokenizer").at("stop_ids").items()) {
      if (b.stop_ids.insert(s.as_int()).second) b.stop_ids_in_order.push_back(s.as_int());
    }
    if (const Json* buffers = m.at("state").find("buffers")) {
      for (const auto& spec : buffers->items()) {
        StateBuffer sb;
        sb.name = spec.at("name").as_string();
        sb.dtype = spec.at("dtype").as_string();
        const size_t elem = safetensors_element_size(safetensors_dtype_of(sb.dtype));
        if (elem == 0) throw Failure("state buffer '" + sb.name + "': unsupported dtype " + sb.dtype);
        sb.bytes = elem;
        for (const auto& d : spec.at("shape").items()) {
          sb.shape.push_back(d.as_int());
          sb.bytes *= static_cast<size_t>(d.as_int());
        }
        const Json* axis = spec.find("seq_axis");
        if (axis && !axis->is_null()) {
          sb.seq_axis = static_cast<int>(axis->as_int());
          if (sb.seq_axis < 0 || sb.seq_axis >= static_cast<int>(sb.shape.size()))
            throw Failure("state buffer '" + sb.name + "': seq_axis " + std::to_string(sb.seq_axis) +
                          " is not an axis of its shape");
        }
        b.buffers.push_back(std::move(sb));
      }
    }
    if (const Json* vision = m.find("vision")) {
      b.vision = Vision::parse(*vision);
      b.hidden = m.at("model").at("config").at("hidden_size").as_int();
      b.max_embed_tokens = std::min(method_max_tokens(m, kEmbedMethod, b.max_prefill),
                                    method_max_tokens(m, kEmbeddingsPrefillMethod, b.max_prefill));
      if (b.max_embed_tokens < 1) throw Failure("field 'program/methods/" + std::string(kEmbedMethod) +
                                                "/max_tokens': must be >= 1");
    }
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
    if (verify) {
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

// ExecuTorch, the kernel check and the thread pool; returns the pool's size.
int64_t init_runtime(const Json& manifest, int threads) {
  et::runtime_init();
  check_kernel_namespaces(manifest);
  auto* pool = ::executorch::extension::threadpool::get_threadpool();
  if (threads > 0 && pool && !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
    throw Failure("--threads " + std::to_string(threads) + ": the ExecuTorch thread pool refused the size");
  return pool ? static_cast<int64_t>(pool->get_thread_count()) : 1;
}

// ---- the model: prefill, decode and the state methods over one set of shared arenas -------------------------

class Model {
 public:
  Model(const Bundle& b, bool shared_arenas, et::EventTracer* tracer)
      : bundle_(b),
        program_(b.pte, shared_arenas),
        forward_(program_.load_method(kPrefillMethod, tracer), kPrefillMethod, b.vocab),
        decode_(program_.load_method(kDecodeMethod, tracer), kDecodeMethod, b.vocab) {}

  // ids[0..n) at positions start_pos.. through `forward`, at most `chunk` per call; logits after the last. A chunk
  // starting at position 0 zeroes the state in-graph.
  void prefill(const int64_t* ids, size_t n, int64_t start_pos, int64_t chunk, std::vector<float>& logits) {
    for (size_t i = 0; i < n; i += static_cast<size_t>(chunk)) {
      const int64_t len = std::min<int64_t>(chunk, static_cast<int64_t>(n - i));
      forward_.run(ids + i, len, start_pos + static_cast<int64_t>(i), logits);
    }
  }

  void decode(int64_t token, int64_t pos, std::vector<float>& logits) { decode_.run(&token, 1, pos, logits); }

  // ---- images (CONTRACT.md, "Images"): these methods load on first use, so a text prompt loads nothing more ------

  // rgb [H,W,3] uint8 at the size's pixels -> out [tokens * hidden] (copied out of the shared arenas).
  void encode_image(const ImageSize& size, const uint8_t* rgb, std::vector<float>& out) {
    et::Method& m = image_method(size.method);
    HostTensor in(ScalarType::Byte, {size.height, size.width, 3}, rgb);
    run(m, size.method.c_str(), {&in});
    copy_floats(m, size.method.c_str(), size.tokens * bundle_.hidden, out);
  }

  // ids[0..n) -> out [n * hidden], at most `chunk` ids per embed_tokens call.
  void embed(const int64_t* ids, size_t n, int64_t chunk, std::vector<float>& out) {
    et::Method& m = image_method(kEmbedMethod);
    out.resize(n * static_cast<size_t>(bundle_.hidden));
    std::vector<float> part;
    for (size_t i = 0; i < n; i += static_cast<size_t>(chunk)) {
      const int64_t len = std::min<int64_t>(chunk, static_cast<int64_t>(n - i));
      HostTensor tok(ScalarType::Long, {1, len}, ids + i);
      run(m, kEmbedMethod, {&tok});
      copy_floats(m, kEmbedMethod, len * bundle_.hidden, part);
      std::copy(part.begin(), part.end(), out.begin() + static_cast<std::ptrdiff_t>(i * bundle_.hidden));
    }
  }

  // embeds [n, hidden] at cache slots start_slot.., rope [3, n] row-major; logits after the last, at most `chunk`
  // rows per prefill_embeddings call. A chunk at slot 0 resets the state in-graph, as `forward` does.
  void prefill_embeddings(const std::vector<float>& embeds, const std::vector<int64_t>& rope, int64_t start_slot,
                          int64_t chunk, std::vector<float>& logits) {
    et::Method& m = image_method(kEmbeddingsPrefillMethod);
    const size_t n = rope.size() / 3;
    std::vector<int64_t> slots, rope_part;
    for (size_t i = 0; i < n; i += static_cast<size_t>(chunk)) {
      const size_t len = std::min<size_t>(static_cast<size_t>(chunk), n - i);
      slots.resize(len);
      for (size_t k = 0; k < len; ++k) slots[k] = start_slot + static_cast<int64_t>(i + k);
      rope_part.clear();  // [3, n] -> its columns i..i+len as [3, len]
      for (size_t r = 0; r < 3; ++r)
        rope_part.insert(rope_part.end(), rope.begin() + static_cast<std::ptrdiff_t>(r * n + i),
                         rope.begin() + static_cast<std::ptrdiff_t>(r * n + i + len));
      const int64_t t = static_cast<int64_t>(len);
      HostTensor e(ScalarType::Float, {1, t, bundle_.hidden}, embeds.data() + i * static_cast<size_t>(bundle_.hidden));
      HostTensor s(ScalarType::Long, {t}, slots.data());
      HostTensor rp(ScalarType::Long, {3, t}, rope_part.data());
      run(m, kEmbeddingsPrefillMethod, {&e, &s, &rp});
      last_logits(m, kEmbeddingsPrefillMethod, logits);
    }
  }

  // One token at cache slot `slot` and rotary position `rope` (behind the slot after an image).
  void decode_rope(int64_t token, int64_t slot, int64_t rope, std::vector<float>& logits) {
    et::Method& m = image_method(kRopeDecodeMethod);
    HostTensor tok(ScalarType::Long, {1, 1}, &token);
    HostTensor s(ScalarType::Long, {1}, &slot);
    HostTensor rp(ScalarType::Long, {1}, &rope);
    run(m, kRopeDecodeMethod, {&tok, &s, &rp});
    last_logits(m, kRopeDecodeMethod, logits);
  }

  size_t arena_bytes() const { return program_.arena_bytes(); }

  bool has_state_methods() const { return program_.has_method("state_read") && program_.has_method("state_write"); }

  // Every state buffer in manifest order, whole (state_read's copies, copied out of the arenas).
  std::vector<std::vector<uint8_t>> read_state() {
    et::Method& m = state_method("state_read", state_read_);
    check(m.execute(), "state_read", "execute");
    if (m.outputs_size() != bundle_.buffers.size())
      throw Failure("method 'state_read' returns " + std::to_string(m.outputs_size()) + " tensors, manifest.json " +
                    "state.buffers lists " + std::to_string(bundle_.buffers.size()));
    std::vector<std::vector<uint8_t>> out;
    for (size_t i = 0; i < bundle_.buffers.size(); ++i) {
      const et::EValue& v = m.get_output(i);
      const StateBuffer& sb = bundle_.buffers[i];
      if (!v.isTensor() || v.toTensor().nbytes() != sb.bytes)
        throw Failure("method 'state_read' output " + std::to_string(i) + " does not match state buffer '" + sb.name +
                      "' of manifest.json (" + std::to_string(sb.bytes) + " bytes)");
      const auto* p = static_cast<const uint8_t*>(v.toTensor().const_data_ptr());
      out.emplace_back(p, p + sb.bytes);
    }
    return out;
  }

  // Replaces every state buffer; `full` in manifest order and shapes.
  void write_state(std::vector<std::vector<uint8_t>>& full) {
    et::Method& m = state_method("state_write", state_write_);
    const et::MethodMeta meta = program_.meta("state_write");
    if (meta.num_inputs() != bundle_.buffers.size())
      throw Failure("method 'state_write' takes " + std::to_string(meta.num_inputs()) + " inputs, manifest.json " +
                    "state.buffers lists " + std::to_string(bundle_.buffers.size()));
    // The TensorImpls and their shape arrays must outlive execute(): an input that is not memory-planned is used in
    // place, not copied.
    struct Shape {
      std::vector<TensorImpl::SizesType> sizes;
      std::vector<TensorImpl::DimOrderType> order;
      std::vector<TensorImpl::StridesType> strides;
    };
    std::vector<Shape> shapes(full.size());
    std::vector<TensorImpl> impls;
    impls.reserve(full.size());
    for (size_t i = 0; i < full.size(); ++i) {
      const StateBuffer& sb = bundle_.buffers[i];
      auto info = meta.input_tensor_meta(i);
      if (!info.ok()) throw Failure("method 'state_write': input " + std::to_string(i) + " is not a tensor");
      Shape& s = shapes[i];
      for (auto d : sb.shape) s.sizes.push_back(static_cast<TensorImpl::SizesType>(d));
      const auto want = info->sizes();
      if (want.size() != s.sizes.size() || !std::equal(want.begin(), want.end(), s.sizes.begin()))
        throw Failure("method 'state_write' input " + std::to_string(i) + " has another shape than state buffer '" +
                      sb.name + "' of manifest.json");
      s.strides.resize(s.sizes.size());
      TensorImpl::StridesType stride = 1;
      for (size_t d = s.sizes.size(); d-- > 0;) {
        s.order.insert(s.order.begin(), static_cast<TensorImpl::DimOrderType>(d));
        s.strides[d] = stride;
        stride *= s.sizes[d];
      }
      impls.emplace_back(info->scalar_type(), static_cast<ssize_t>(s.sizes.size()), s.sizes.data(), full[i].data(),
                         s.order.data(), s.strides.data());
      check(m.set_input(et::EValue(::executorch::aten::Tensor(&impls.back())), i), "state_write", "setting an input");
    }
    check(m.execute(), "state_write", "execute");
  }

 private:
  et::Method& image_method(const std::string& name) {
    if (!bundle_.vision)
      throw Failure(bundle_.dir + "/manifest.json: no vision section: this bundle takes no images (exported from a "
                    "checkpoint without a vision tower)");
    auto it = image_methods_.find(name);
    if (it == image_methods_.end()) it = image_methods_.emplace(name, &program_.load_method(name.c_str())).first;
    return *it->second;
  }
  static void run(et::Method& m, const char* name, std::initializer_list<const HostTensor*> inputs) {
    size_t i = 0;
    for (const HostTensor* t : inputs) check(m.set_input(t->value(), i++), name, "setting an input");
    check(m.execute(), name, "execute");
  }
  static const ::executorch::aten::Tensor& float_output(et::Method& m, const char* name) {
    const et::EValue& out = m.get_output(0);
    if (!out.isTensor() || out.toTensor().scalar_type() != ScalarType::Float)
      throw Failure(std::string("method '") + name + "': output 0 is not a float32 tensor");
    return out.toTensor();
  }
  static void copy_floats(et::Method& m, const char* name, int64_t expected, std::vector<float>& out) {
    const auto& t = float_output(m, name);
    if (t.numel() != expected)
      throw Failure(std::string("method '") + name + "': output 0 has " + std::to_string(t.numel()) +
                    " values, expected " + std::to_string(expected) + " (tokens x model.config.hidden_size)");
    out.assign(t.const_data_ptr<float>(), t.const_data_ptr<float>() + expected);
  }
  void last_logits(et::Method& m, const char* name, std::vector<float>& logits) const {
    const auto& t = float_output(m, name);
    if (t.numel() < bundle_.vocab || t.numel() % bundle_.vocab)
      throw Failure(std::string("method '") + name + "': output 0 is not logits of vocab " +
                    std::to_string(bundle_.vocab));
    const float* last = t.const_data_ptr<float>() + (t.numel() - bundle_.vocab);
    logits.assign(last, last + bundle_.vocab);
  }

  et::Method& state_method(const char* name, et::Method*& slot) {
    if (!has_state_methods())
      throw Failure(bundle_.pte + ": this program has no state_read/state_write methods (exported by an older "
                    "qwen-mobile); re-export the bundle to use snapshots");
    if (bundle_.buffers.empty()) throw Failure(bundle_.dir + "/manifest.json: state.buffers is missing");
    if (!slot) slot = &program_.load_method(name);  // loaded on first use: bench runs never need them
    return *slot;
  }
  static void check(et::Error e, const char* method, const char* what) {
    if (e != et::Error::Ok)
      throw Failure(std::string("method '") + method + "': " + what + " failed: " + et_error(e));
  }

  const Bundle& bundle_;
  Program program_;
  LmMethod forward_, decode_;
  et::Method* state_read_ = nullptr;
  et::Method* state_write_ = nullptr;
  std::map<std::string, et::Method*> image_methods_;
};

// Prefills a laid-out prompt through the embeddings methods (CONTRACT.md, "Images", steps 2-4): the image encoded
// (when `size` is given), the prompt embedded, the image's rows written over its tokens', then prefill_embeddings from
// cache slot `start_slot`. Returns the seconds the encode took.
double prefill_with_rope(Model& model, const Bundle& b, const ImagePromptLayout& layout, const ImageSize* size,
                         const uint8_t* rgb, int64_t start_slot, int64_t chunk, std::vector<float>& logits) {
  double encode_s = 0;
  std::vector<float> image_rows, embeds;
  if (size) {
    const auto t0 = clock_type::now();
    model.encode_image(*size, rgb, image_rows);
    encode_s = now_s(t0);
  }
  model.embed(layout.tokens.data(), layout.tokens.size(), chunk, embeds);
  std::copy(image_rows.begin(), image_rows.end(),
            embeds.begin() + static_cast<std::ptrdiff_t>(layout.image_begin * static_cast<size_t>(b.hidden)));
  model.prefill_embeddings(embeds, layout.rope, start_slot, chunk, logits);
  return encode_s;
}

// An image for the benchmark's prompts: its pixels and the bundle size they are.
struct BenchImage {
  const ImageSize* size = nullptr;
  std::vector<uint8_t> rgb;
  std::string file;
};

// ---- the benchmark: prompts, runs, the bench-schema report ---------------------------------------------------

struct PromptSet {
  std::vector<std::vector<int64_t>> prompts;
  std::string source;
};

// `given` ids, else random prompts of `lens` (seeded per length), else the manifest's sample prompt, else one random
// prompt of 128. `given_source` names where given ids came from (a flag or a request field).
PromptSet make_prompts(const Bundle& b, const std::vector<int64_t>& given, const std::vector<int64_t>& lens,
                       uint64_t seed, const std::string& given_source) {
  PromptSet ps;
  const Json& m = b.manifest;
  if (!given.empty()) {
    ps.prompts.push_back(given);
    ps.source = given_source;
  } else if (lens.empty() && m.find("sample_prompt") != nullptr) {
    // No prompt asked for: the manifest's sample prompt, the one the export verification ran.
    std::vector<int64_t> ids;
    for (const auto& t : m.at("sample_prompt").at("ids").items()) ids.push_back(t.as_int());
    ps.prompts.push_back(std::move(ids));
    ps.source = "the manifest's sample_prompt";
  } else {
    for (auto len : lens.empty() ? std::vector<int64_t>{128} : lens) {
      // Seeded per length as runtime/bench.py does (seed + length); the generator differs from torch's, so the
      // ids differ from the host runner's.
      std::mt19937_64 rng(seed + static_cast<uint64_t>(len));
      std::uniform_int_distribution<int64_t> dist(0, b.vocab - 1);
      std::vector<int64_t> ids(static_cast<size_t>(len));
      for (auto& t : ids) {
        t = dist(rng);
        if (b.stop_ids.count(t)) t = (t + 1) % b.vocab;
      }
      ps.prompts.push_back(std::move(ids));
    }
    ps.source = "random token ids (std::mt19937_64), seed " + std::to_string(seed) + " + prompt length";
  }
  return ps;
}

// Errors name `ids_field` and `gen_field`: the CLI's flags or the serve request's fields.
void check_prompts(const Bundle& b, const PromptSet& ps, int64_t gen, const std::string& ids_field,
                   const std::string& gen_field) {
  for (const auto& p : ps.prompts) {
    for (auto t : p)
      if (t < 0 || t >= b.vocab)
        throw Failure(ids_field + ": token " + std::to_string(t) + " is outside the vocabulary 0.." +
                      std::to_string(b.vocab - 1));
    if (static_cast<int64_t>(p.size()) + gen > b.max_seq_len)
      throw Failure("prompt of " + std::to_string(p.size()) + " tokens + " + gen_field + " " + std::to_string(gen) +
                    " does not fit the bundle's context of " + std::to_string(b.max_seq_len) + " tokens");
  }
}

struct BenchSettings {
  int64_t gen = 64;
  int runs = 5;
  int warmup = 1;
  int64_t chunk = 0;
  bool stop_at_stop_ids = false;
  bool dump_logits = false;  // keep the logits of the first measured run of the first prompt
};

struct RunOut {
  double ttft_s = 0, prefill_s = 0, decode_s = 0, image_encode_s = 0;
  std::vector<double> step_s;
  std::vector<int64_t> ids;
};

struct BenchOutcome {
  Json results = Json::array();
  Json notes = Json::array();
  int64_t run_tokens = 0;
  double run_wall_s = 0;
  std::vector<float> dumped;  // [gen, vocab] when BenchSettings::dump_logits
  Json images;                 // the report's `images` rows (bundles with a vision section), else null
};

// One greedy run from position 0 (which resets the state); with `image`, `layout` is the prompt laid out for it.
RunOut run_once(Model& model, const Bundle& b, const std::vector<int64_t>& prompt, const BenchSettings& s,
                std::vector<float>& logits, std::vector<float>* dump, const BenchImage* image = nullptr,
                const ImagePromptLayout* layout = nullptr) {
  RunOut r;
  const auto t0 = clock_type::now();
  int64_t pos = static_cast<int64_t>(prompt.size());
  int64_t rope_delta = 0;  // rotary position - cache slot, for every token after the prompt
  if (image) {
    r.image_encode_s = prefill_with_rope(model, b, *layout, image->size, image->rgb.data(), 0,
                                         std::min(s.chunk, b.max_embed_tokens), logits);
    pos = static_cast<int64_t>(layout->tokens.size());
    rope_delta = layout->next_rope - pos;
  } else {
    model.prefill(prompt.data(), prompt.size(), 0, s.chunk, logits);
  }
  const double elapsed = now_s(t0);
  r.prefill_s = elapsed - r.image_encode_s;
  r.ttft_s = elapsed;
  for (int64_t k = 0; k < s.gen; ++k) {
    if (dump) dump->insert(dump->end(), logits.begin(), logits.end());
    const int64_t tok = argmax(logits);
    if (k == 0) r.ttft_s = now_s(t0);
    r.ids.push_back(tok);
    if ((s.stop_at_stop_ids && b.stop_ids.count(tok)) || k == s.gen - 1) break;
    const auto t1 = clock_type::now();
    if (image) model.decode_rope(tok, pos, pos + rope_delta, logits);
    else model.decode(tok, pos, logits);
    ++pos;
    const double dt = now_s(t1);
    r.step_s.push_back(dt);
    r.decode_s += dt;
  }
  return r;
}

// One prompt's entry of the report's `results`.
// `fed`: the tokens prefill ran (the prompt, or with an image the prompt with its image token expanded).
Json prompt_result(const std::vector<int64_t>& prompt, size_t fed, const std::vector<RunOut>& outs, int64_t gen,
                   bool identical, const BenchImage* image) {
  std::vector<double> ttft, pre, dec, enc;
  Json samples = Json::array();
  for (const auto& r : outs) {
    const double pre_tps = r.prefill_s > 0 ? fed / r.prefill_s : 0.0;
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
    if (image) {
      s.set("image_encode_ms", r.image_encode_s * 1e3);
      enc.push_back(r.image_encode_s * 1e3);
    }
    samples.push(std::move(s));
  }
  Json res = Json::object();
  res.set("prompt_tokens", static_cast<int64_t>(fed));
  res.set("generate_tokens", gen);
  res.set("ttft_ms", stats(ttft));
  res.set("prefill_tok_s", stats(pre));
  res.set("decode_tok_s", dec.empty() ? Json() : stats(dec));
  res.set("samples", std::move(samples));
  // Beyond the schema: the ids themselves, for parity checks against Python and across architectures.
  Json pids = Json::array(), gids = Json::array();
  for (auto t : prompt) pids.push(t);
  for (auto t : outs[0].ids) gids.push(t);
  res.set("prompt_ids", std::move(pids));
  res.set("generated_ids", std::move(gids));
  res.set("runs_identical", identical);
  if (image) {
    // ttft_ms includes the encode; prefill_tok_s counts the image's tokens and leaves the encode out.
    res.set("image_encode_ms", stats(enc));
    Json im = Json::object();
    im.set("method", image->size->method);
    im.set("height", image->size->height);
    im.set("width", image->size->width);
    im.set("tokens", image->size->tokens);
    im.set("file", image->file);
    res.set("image", std::move(im));
  }
  return res;
}

// runtime/images.py synthetic_image: the fixed test card [H,W,3] (gradients in R and G, a checkerboard in B), so the
// image rows need no file and match the host's.
std::vector<uint8_t> synthetic_image(int64_t height, int64_t width) {
  std::vector<uint8_t> rgb(static_cast<size_t>(height * width * 3));
  for (int64_t r = 0; r < height; ++r)
    for (int64_t c = 0; c < width; ++c) {
      uint8_t* px = &rgb[static_cast<size_t>((r * width + c) * 3)];
      px[0] = static_cast<uint8_t>(r * 255 / std::max<int64_t>(height - 1, 1));
      px[1] = static_cast<uint8_t>(c * 255 / std::max<int64_t>(width - 1, 1));
      px[2] = static_cast<uint8_t>(((r / 8 + c / 8) % 2) * 200 + 28);
    }
  return rgb;
}

constexpr int64_t kImagePromptTextTokens = 16;  // runtime/bench.py IMAGE_PROMPT_TEXT_TOKENS: a short question

// The bench schema's `images` rows, as runtime/bench.py bench_images measures them: per bundle image size, the test
// card before 16 random text tokens, greedy to the first token from position 0; encode_ms is the encode_image call,
// ttft_ms the whole prompt (encode, embed, prefill, the first argmax).
Json bench_images(Model& model, const Bundle& b, int runs, int warmup, uint64_t seed, int64_t chunk, Json& notes) {
  Json out = Json::array();
  const Vision& v = *b.vision;
  std::vector<int64_t> prompt = {v.vision_start_token_id, v.image_token_id, v.vision_end_token_id};
  std::mt19937_64 rng(seed + static_cast<uint64_t>(kImagePromptTextTokens));
  std::uniform_int_distribution<int64_t> dist(0, b.vocab - 1);
  for (int64_t i = 0; i < kImagePromptTextTokens; ++i) {
    int64_t t = dist(rng);
    while (b.stop_ids.count(t) || t == v.image_token_id || t == v.vision_start_token_id ||
           t == v.vision_end_token_id)
      t = (t + 1) % b.vocab;
    prompt.push_back(t);
  }
  std::vector<float> logits;
  for (const ImageSize& size : v.images) {
    const ImagePromptLayout layout = layout_image_prompt(v, prompt, 0, &size, 0, "images");
    if (static_cast<int64_t>(layout.tokens.size()) > b.max_seq_len) {
      notes.push("images: " + size.method + " skipped: its prompt of " + std::to_string(layout.tokens.size()) +
                 " tokens exceeds the context of " + std::to_string(b.max_seq_len));
      continue;
    }
    const std::vector<uint8_t> rgb = synthetic_image(size.height, size.width);
    std::vector<double> encode, ttft;
    for (int r = 0; r < warmup + runs; ++r) {
      const auto t0 = clock_type::now();
      const double encode_s = prefill_with_rope(model, b, layout, &size, rgb.data(), 0, chunk, logits);
      argmax(logits);
      const double ttft_s = now_s(t0);
      if (r < warmup) continue;
      encode.push_back(encode_s * 1e3);
      ttft.push_back(ttft_s * 1e3);
    }
    Json row = Json::object();
    row.set("height", size.height);
    row.set("width", size.width);
    row.set("method", size.method);
    row.set("tokens", size.tokens);
    row.set("prompt_tokens", static_cast<int64_t>(layout.tokens.size()));
    row.set("encode_ms", stats(encode));
    row.set("ttft_ms", stats(ttft));
    out.push(std::move(row));
  }
  return out;
}

// Warmups (unmeasured) and measured runs of every prompt; the sampler, when given, is told the phase.
BenchOutcome run_benchmark(Model& model, const Bundle& b, const PromptSet& ps, const BenchSettings& s,
                           PowerSampler* sampler, const BenchImage* image = nullptr) {
  BenchOutcome o;
  std::vector<float> logits;
  for (size_t p = 0; p < ps.prompts.size(); ++p) {
    const auto& prompt = ps.prompts[p];
    std::optional<ImagePromptLayout> layout;
    if (image) layout = layout_image_prompt(*b.vision, prompt, 0, image->size, 0, "--prompt-ids");
    const ImagePromptLayout* lp = layout ? &*layout : nullptr;
    const size_t fed = layout ? layout->tokens.size() : prompt.size();
    if (sampler) sampler->set_phase("warmup");
    for (int w = 0; w < s.warmup; ++w) run_once(model, b, prompt, s, logits, nullptr, image, lp);
    if (sampler) sampler->set_phase("run");
    std::vector<RunOut> outs;
    const auto t_runs = clock_type::now();
    for (int r = 0; r < s.runs; ++r) {
      outs.push_back(run_once(model, b, prompt, s, logits, s.dump_logits && p == 0 && r == 0 ? &o.dumped : nullptr,
                              image, lp));
      o.run_tokens += static_cast<int64_t>(outs.back().ids.size());
    }
    o.run_wall_s += now_s(t_runs);
    bool identical = true;
    for (const auto& r : outs) identical &= r.ids == outs[0].ids;
    if (!identical) {
      std::fprintf(stderr, "qwen-bench: warning: runs of the %zu-token prompt produced different tokens; the state "
                   "may not be reset by a prefill at position 0\n", prompt.size());
      o.notes.push("runs of the " + std::to_string(prompt.size()) + "-token prompt produced different tokens");
    }
    o.results.push(prompt_result(prompt, fed, outs, s.gen, identical, image));
  }
  return o;
}

struct LoadInfo {
  double ms = 0;
  int64_t rss_bytes = -1;
  size_t arena_bytes = 0;
  int64_t threads = 1;
};

// The bench-schema document (runtime/schemas/bench.schema.json, producer qwen-bench).
Json bench_report(const Bundle& b, const PromptSet& ps, const BenchSettings& s, const LoadInfo& load,
                  BenchOutcome& outcome, Json energy, int emulated_override, clock_type::time_point t_start) {
  Json device = device_info(emulated_override);
  if (device.at("emulated").as_bool()) outcome.notes.push("emulated (qemu): timings are not performance");
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);

  const Json& m = b.manifest;
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
  for (const auto& p : ps.prompts) lens.push(static_cast<int64_t>(p.size()));
  settings.set("prompt_lengths", std::move(lens));
  settings.set("generate_tokens", s.gen);
  settings.set("runs", s.runs);
  settings.set("warmup", s.warmup);
  settings.set("threads", load.threads);
  settings.set("prefill_chunk", s.chunk);
  settings.set("prompt_source", ps.source);
  settings.set("stop_at_stop_ids", s.stop_at_stop_ids);
  out.set("settings", std::move(settings));
  out.set("results", std::move(outcome.results));
  if (!outcome.images.is_null()) out.set("images", std::move(outcome.images));
  Json memory = Json::object();
  memory.set("peak_rss_bytes", static_cast<int64_t>(ru.ru_maxrss) * 1024);
  memory.set("load_rss_bytes", load.rss_bytes >= 0 ? Json(load.rss_bytes) : Json());
  memory.set("load_ms", load.ms);
  memory.set("planned_arena_bytes", static_cast<int64_t>(load.arena_bytes));
  out.set("memory", std::move(memory));
  out.set("energy", std::move(energy));
  out.set("notes", std::move(outcome.notes));
  out.set("wall_seconds", now_s(t_start));
  return out;
}

int run_replay(const Options& o) {
  PowerTrace t = read_trace(o.power_replay);
  Json e = summarize_energy(t, o.current_unit);
  const std::string text = e.dump() + "\n";
  if (o.json_out.empty()) std::fputs(text.c_str(), stdout);
  else { std::ofstream(o.json_out) << text; }
  return 0;
}

void write_etdump_file(const std::string& path, const void* buf, size_t size) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(static_cast<const char*>(buf), static_cast<std::streamsize>(size));
    if (!f) throw Failure(path + ": cannot write the ETDump");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Failure(path + ": cannot rename " + tmp);
}

// The run's settings from the flags, checked against the bundle.
BenchSettings bench_settings(const Options& o, const Bundle& b) {
  BenchSettings s;
  s.gen = o.gen;
  s.runs = o.runs;
  s.warmup = o.warmup;
  s.stop_at_stop_ids = o.stop_at_stop_ids;
  s.dump_logits = !o.dump_logits.empty();
  s.chunk = o.prefill_chunk ? o.prefill_chunk : b.max_prefill;
  if (s.chunk > b.max_prefill)
    throw Failure("--prefill-chunk " + std::to_string(s.chunk) + " exceeds the forward method's max_tokens " +
                  std::to_string(b.max_prefill));
  return s;
}

// --etdump: one generator for both methods (each execute() opens its own event block, in call order), written after
// the runs. A runner built without ETDump support refused the flag in parse_args, so there `tracer()` is null.
class EtdumpRecorder {
 public:
  explicit EtdumpRecorder(const std::string& path) : path_(path) {
#if QWEN_BENCH_HAVE_ETDUMP
    if (!path_.empty()) gen_ = std::make_unique<::executorch::etdump::ETDumpGen>();
#endif
  }

  et::EventTracer* tracer() const {
#if QWEN_BENCH_HAVE_ETDUMP
    return gen_.get();
#else
    return nullptr;
#endif
  }

  void write(Json& notes) {
#if QWEN_BENCH_HAVE_ETDUMP
    if (!gen_) return;
    const ::executorch::etdump::ETDumpResult dump = gen_->get_etdump_data();
    if (dump.buf == nullptr || dump.size == 0) throw Failure(path_ + ": the ETDump is empty");
    write_etdump_file(path_, dump.buf, dump.size);
    free(dump.buf);
    notes.push("ETDump recorded (" + path_ + "): timings include the profiler's overhead");
#else
    (void)notes;
#endif
  }

 private:
  std::string path_;
#if QWEN_BENCH_HAVE_ETDUMP
  std::unique_ptr<::executorch::etdump::ETDumpGen> gen_;
#endif
};

// Battery sampling around the runs: an idle baseline first, then warmups (ignored) and measured runs. Null (with
// *why) when not asked for or no battery is readable.
std::unique_ptr<PowerSampler> start_power(const Options& o, std::string* why) {
  if (o.no_power) return nullptr;
  std::unique_ptr<PowerSampler> sampler = PowerSampler::open(o.power_root, o.power_hz, why);
  if (sampler) {
    sampler->set_phase("idle");
    sampler->start();
    std::this_thread::sleep_for(std::chrono::duration<double>(o.idle_seconds));
  }
  return sampler;
}

// The energy summary of the runs (null unless sampled; then a note says why when sampling was asked for).
Json finish_power(PowerSampler* sampler, const Options& o, const std::string& why, BenchOutcome& outcome) {
  if (!sampler) {
    if (!o.no_power) outcome.notes.push("energy not sampled: " + why);
    return Json();
  }
  PowerTrace trace = sampler->stop();
  trace.tokens = outcome.run_tokens;
  trace.run_wall_s = outcome.run_wall_s;
  if (!o.power_log.empty()) write_trace(o.power_log, trace);
  return summarize_energy(trace, o.current_unit);
}

void write_logits_dump(const std::string& path, const std::vector<float>& logits) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!f) throw Failure(path + ": cannot write the logits dump");
}

// The report as one JSON line on stdout, or into --json with a one-line summary per prompt on stderr.
void emit_report(const Json& report, const std::string& json_out) {
  const std::string text = report.dump() + "\n";
  if (json_out.empty()) {
    std::fputs(text.c_str(), stdout);
    return;
  }
  std::ofstream f(json_out);
  f << text;
  if (!f) throw Failure(json_out + ": cannot write");
  for (const Json& r : report.at("results").items()) {
    const std::string decode =
        r.at("decode_tok_s").is_null() ? "-" : std::to_string(r.at("decode_tok_s").at("median").as_double());
    std::fprintf(stderr, "prompt %lld: TTFT %.2f ms, prefill %.1f tok/s, decode %s tok/s (median)\n",
                 static_cast<long long>(r.at("prompt_tokens").as_int()), r.at("ttft_ms").at("median").as_double(),
                 r.at("prefill_tok_s").at("median").as_double(), decode.c_str());
  }
}

// --image: the bundle size it is, its pixels, and the prompts with the image span put first where none was given.
std::unique_ptr<BenchImage> bench_image(const Options& o, const Bundle& b, PromptSet& ps) {
  if (o.image_height == 0) return nullptr;
  if (!b.vision)
    throw Failure("--image: " + b.dir + "/manifest.json has no vision section: this bundle takes no images (exported "
                  "from a checkpoint without a vision tower)");
  auto image = std::make_unique<BenchImage>();
  try {
    image->size = &b.vision->size_for(o.image_height, o.image_width, "--image-size");
  } catch (const std::runtime_error& e) {
    throw Failure(e.what());
  }
  if (o.prompt_ids.empty()) {
    const Vision& v = *b.vision;
    ps.prompts[0].insert(ps.prompts[0].begin(), {v.vision_start_token_id, v.image_token_id, v.vision_end_token_id});
    ps.source += ", after the image span (vision_start, image token, vision_end)";
  }
  if (o.print_positions) return image;
  image->file = o.image_file;
  const std::string bytes = read_file(o.image_file);
  const size_t want = static_cast<size_t>(o.image_height * o.image_width * 3);
  if (bytes.size() != want)
    throw Failure("--image: " + o.image_file + " has " + std::to_string(bytes.size()) + " bytes; --image-size " +
                  std::to_string(o.image_height) + "x" + std::to_string(o.image_width) + " needs " +
                  std::to_string(want) + " (raw RGB, 3 bytes per pixel, no header)");
  image->rgb.assign(bytes.begin(), bytes.end());
  return image;
}

// --print-positions: the prompt as prefill_embeddings would take it (CONTRACT.md, "Images", steps 1 and 3).
int print_positions(const Bundle& b, const PromptSet& ps, const ImageSize& size) {
  const ImagePromptLayout l = layout_image_prompt(*b.vision, ps.prompts[0], 0, &size, 0, "--prompt-ids");
  Json out = Json::object();
  Json tokens = Json::array(), rope = Json::array();
  for (auto t : l.tokens) tokens.push(t);
  const size_t n = l.tokens.size();
  for (size_t r = 0; r < 3; ++r) {
    Json row = Json::array();
    for (size_t i = 0; i < n; ++i) row.push(l.rope[r * n + i]);
    rope.push(std::move(row));
  }
  out.set("method", size.method);
  out.set("tokens", std::move(tokens));
  out.set("rope_pos", std::move(rope));
  out.set("image_begin", static_cast<int64_t>(l.image_begin));
  out.set("image_end", static_cast<int64_t>(l.image_end));
  out.set("next_rope_position", l.next_rope);
  std::fputs((out.dump(0) + "\n").c_str(), stdout);
  return 0;
}

int run_bench(const Options& o) {
  const auto t_start = clock_type::now();
  const Bundle b = open_bundle(o.bundle, o.verify);
  PromptSet ps = make_prompts(b, o.prompt_ids, o.prompt_lens, o.seed, "token ids from --prompt-ids");
  const std::unique_ptr<BenchImage> image = bench_image(o, b, ps);
  if (o.print_positions) return print_positions(b, ps, *image->size);
  LoadInfo load;
  load.threads = init_runtime(b.manifest, o.threads);

  // Prompts and bounds first: a bad request fails before the model loads.
  const BenchSettings s = bench_settings(o, b);
  if (image) {
    PromptSet expanded;  // what prefill runs: the image token expanded to the image's tokens
    for (const auto& p : ps.prompts)
      expanded.prompts.push_back(layout_image_prompt(*b.vision, p, 0, image->size, 0, "--prompt-ids").tokens);
    check_prompts(b, expanded, o.gen, "--prompt-ids", "--gen");
  } else {
    check_prompts(b, ps, o.gen, "--prompt-ids", "--gen");
  }

  const auto t_load = clock_type::now();
  EtdumpRecorder etdump(o.etdump);
  Model model(b, !o.unshared_arenas, etdump.tracer());
  load.ms = now_s(t_load) * 1e3;
  load.rss_bytes = rss_bytes();
  load.arena_bytes = model.arena_bytes();

  std::string power_why;
  const std::unique_ptr<PowerSampler> sampler = start_power(o, &power_why);
  BenchOutcome outcome = run_benchmark(model, b, ps, s, sampler.get(), image.get());
  Json energy = finish_power(sampler.get(), o, power_why, outcome);
  // After the energy window: the image rows are not part of the measured token runs.
  if (b.vision && !o.no_image_rows)
    outcome.images = bench_images(model, b, s.runs, s.warmup, o.seed, std::min(s.chunk, b.max_embed_tokens),
                                  outcome.notes);
  etdump.write(outcome.notes);
  if (s.dump_logits) write_logits_dump(o.dump_logits, outcome.dumped);

  emit_report(bench_report(b, ps, s, load, outcome, std::move(energy), o.emulated, t_start), o.json_out);
  return 0;
}

// ---- serve: a long-lived JSON-lines server (runtime/runner/SERVE.md) -------------------------------------------

constexpr int kServeProtocol = 1;
constexpr const char* kSnapshotFormat = "qwen-mobile-snapshot";  // runtime/session.py SNAPSHOT_FORMAT / _VERSION
constexpr const char* kSnapshotVersion = "1";

// A request the client got wrong: answered with an error line, and the server keeps serving.
struct RequestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// stdin lines, read on their own thread so that a cancel can arrive while a generate runs on the main thread.
class RequestQueue {
 public:
  struct Request {
    int64_t seq = 0;
    std::string line;
  };

  void start() {
    std::thread([this] { read_loop(); }).detach();  // blocked in read() at exit; the process ends it
  }

  // Blocks for the next request; false at end of input.
  bool pop(Request& r) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty() || eof_; });
    if (queue_.empty()) return false;
    r = std::move(queue_.front());
    queue_.pop_front();
    return true;
  }

  // A cancel stops every generate that was sent before it (running or still queued).
  bool cancelled(int64_t seq) const { return cancel_seq_.load() > seq; }

 private:
  void read_loop() {
    char* buf = nullptr;
    size_t cap = 0;
    int64_t seq = 0;
    ssize_t n;
    while ((n = ::getline(&buf, &cap, stdin)) >= 0) {
      std::string line(buf, static_cast<size_t>(n));
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      ++seq;
      if (is_cancel(line)) cancel_seq_.store(seq);
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({seq, std::move(line)});
      cv_.notify_one();
    }
    free(buf);
    // End of input is a quit after the requests already read (a script may pipe a batch and close stdin).
    std::lock_guard<std::mutex> lock(mu_);
    eof_ = true;
    cv_.notify_one();
  }

  static bool is_cancel(const std::string& line) {
    try {
      const Json j = Json::parse(line, "request");
      const Json* op = j.find("op");
      return op && op->is_string() && op->as_string() == "cancel";
    } catch (const std::exception&) {
      return false;  // answered as a bad request by the main thread
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> queue_;
  bool eof_ = false;
  std::atomic<int64_t> cancel_seq_{0};
};

// Typed access to a request's fields; every error names the field, and fields nobody asked for are an error (a typo
// such as "temprature" would otherwise sample greedily without a word).
class Fields {
 public:
  Fields(const Json& request, std::string op) : r_(request), op_(std::move(op)) { used_.insert("op"); used_.insert("id"); }

  const Json* get(const std::string& name) {
    used_.insert(name);
    const Json* v = r_.find(name);
    return v && !v->is_null() ? v : nullptr;
  }
  int64_t integer(const std::string& name, int64_t def, int64_t lo, bool required = false) {
    const Json* v = get(name);
    if (!v) {
      if (required) throw RequestError(name + ": required");
      return def;
    }
    if (!v->is_number() || std::floor(v->as_double()) != v->as_double() || v->as_double() < static_cast<double>(lo) ||
        v->as_double() > 9.2e18)
      throw RequestError(name + ": expected an integer >= " + std::to_string(lo) + ", got " + v->dump(0));
    return v->as_int();
  }
  double number(const std::string& name, double def) {
    const Json* v = get(name);
    if (!v) return def;
    if (!v->is_number()) throw RequestError(name + ": expected a number, got " + v->dump(0));
    return v->as_double();
  }
  bool boolean(const std::string& name, bool def) {
    const Json* v = get(name);
    if (!v) return def;
    if (v->type() != Json::Type::Bool) throw RequestError(name + ": expected true or false, got " + v->dump(0));
    return v->as_bool();
  }
  std::string string(const std::string& name) {
    const Json* v = get(name);
    if (!v) throw RequestError(name + ": required");
    if (!v->is_string()) throw RequestError(name + ": expected a string, got " + v->dump(0));
    return v->as_string();
  }
  std::vector<int64_t> int_list(const std::string& name, bool required) {
    const Json* v = get(name);
    if (!v) {
      if (required) throw RequestError(name + ": required (a list of token ids)");
      return {};
    }
    if (!v->is_array()) throw RequestError(name + ": expected a list of integers, got " + v->dump(0));
    std::vector<int64_t> out;
    for (size_t i = 0; i < v->items().size(); ++i) {
      const Json& t = v->items()[i];
      if (!t.is_number() || std::floor(t.as_double()) != t.as_double() || std::fabs(t.as_double()) > 9.2e18)
        throw RequestError(name + "[" + std::to_string(i) + "]: expected an integer, got " + t.dump(0));
      out.push_back(t.as_int());
    }
    return out;
  }
  // Call after reading every field the op takes.
  void finish() const {
    for (const auto& kv : r_.members())
      if (!used_.count(kv.first)) {
        std::string known;
        for (const auto& u : used_) known += (known.empty() ? "" : ", ") + u;
        throw RequestError(kv.first + ": unknown field for op '" + op_ + "' (it takes " + known + ")");
      }
  }

 private:
  const Json& r_;
  std::string op_;
  std::set<std::string> used_;
};

// The session's tokens, as runtime/session.py keeps them: `tokens` the model state has consumed (position =
// tokens.size()), and `pending` the last sampled token, which the next turn's prefill consumes first. That is what
// makes a chat that keeps its state token-for-token identical to one long prompt.
// After an image the rotary position runs behind the cache slot (CONTRACT.md, "Images", step 5): `rope_delta` is the
// (non-positive) difference for every later token; 0 for a text-only session, which runs forward/decode_token.
struct Conversation {
  std::vector<int64_t> tokens, pending;
  int64_t rope_delta = 0;
  int64_t position() const { return static_cast<int64_t>(tokens.size()); }
  void reset() {
    tokens.clear();
    pending.clear();
    rope_delta = 0;
  }
};

// A generate request's image: pixels at one of the bundle's sizes.
struct RequestImage {
  const ImageSize* size = nullptr;
  std::vector<uint8_t> rgb;
};

std::string json_list(const std::vector<int64_t>& ids) {  // as Python's json.dumps writes a list of ints
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

class Server {
 public:
  Server(const Options& o, const Bundle& b, Model& model, const LoadInfo& load, RequestQueue& queue)
      : o_(o), b_(b), model_(model), load_(load), queue_(queue) {}

  Json ready_fields() const {
    const Json& m = b_.manifest;
    const Json& recipe = m.at("recipe");
    Json j = Json::object();
    j.set("protocol", kServeProtocol);
    j.set("bundle", b_.dir);
    j.set("model", m.at("model").at("id").as_string());
    j.set("recipe", recipe.find("preset") && recipe.at("preset").is_string() ? recipe.at("preset").as_string()
                                                                              : recipe.at("name").as_string());
    j.set("vocab_size", b_.vocab);
    j.set("max_seq_len", b_.max_seq_len);
    j.set("max_prefill_tokens", b_.max_prefill);
    Json stops = Json::array();
    for (auto s : b_.stop_ids_in_order) stops.push(s);
    j.set("stop_ids", std::move(stops));
    j.set("threads", load_.threads);
    j.set("bundle_hash", b_.hash);
    j.set("snapshots", model_.has_state_methods());
    j.set("runner_version", QWEN_BENCH_VERSION);
    if (b_.vision) {
      Json sizes = Json::array();  // what a generate's image may be (an addition; absent on a text-only bundle)
      for (const auto& i : b_.vision->images) {
        Json e = Json::object();
        e.set("height", i.height);
        e.set("width", i.width);
        e.set("tokens", i.tokens);
        sizes.push(std::move(e));
      }
      j.set("image_sizes", std::move(sizes));
    }
    return j;
  }

  // Returns the exit code once the client quits or closes stdin.
  int serve() {
    Json ready = Json::object();
    ready.set("event", "ready");
    const Json fields = ready_fields();  // a named copy: a range-for over a temporary's members would dangle
    for (const auto& kv : fields.members()) ready.set(kv.first, kv.second);
    emit(ready);
    RequestQueue::Request r;
    while (queue_.pop(r)) {
      if (!handle(r)) return 0;
    }
    return 0;  // end of input = quit
  }

 private:
  static void emit(const Json& j) {
    const std::string line = j.dump(0) + "\n";
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
  }

  Json reply(const char* event) const {
    Json j = Json::object();
    j.set("event", event);
    if (!id_.is_null()) j.set("id", id_);
    return j;
  }

  void error(const std::string& message, const std::string& op) const {
    Json j = reply("error");
    if (!op.empty()) j.set("op", op);
    j.set("message", message);
    emit(j);
  }

  // False when the server should exit.
  bool handle(const RequestQueue::Request& r) {
    id_ = Json();
    std::string op;
    try {
      Json req;
      try {
        req = Json::parse(r.line, "request");
      } catch (const std::runtime_error& e) {
        throw RequestError(e.what());
      }
      if (!req.is_object()) throw RequestError("request: expected a JSON object, got " + req.dump(0));
      if (const Json* id = req.find("id")) {
        if (id->is_array() || id->is_object()) throw RequestError("id: must be a string, number, boolean or null");
        id_ = *id;
      }
      const Json* opv = req.find("op");
      if (!opv) throw RequestError("op: required (generate, cancel, bench, reset, save, load, info or quit)");
      if (!opv->is_string()) throw RequestError("op: expected a string, got " + opv->dump(0));
      op = opv->as_string();
      Fields f(req, op);
      if (op == "generate") generate(f, r.seq);
      else if (op == "cancel") simple_ok(f, "cancel");
      else if (op == "bench") bench(f);
      else if (op == "reset") {
        f.finish();
        conv_.reset();
        Json j = reply("ok");
        j.set("op", "reset");
        j.set("position", 0);
        emit(j);
      } else if (op == "save") save(f);
      else if (op == "load") load(f);
      else if (op == "info") {
        f.finish();
        Json j = reply("info");
        j.set("position", conv_.position());
        j.set("history_tokens", static_cast<int64_t>(conv_.tokens.size() + conv_.pending.size()));
        j.set("pending_tokens", static_cast<int64_t>(conv_.pending.size()));
        if (b_.vision) j.set("rope_position", conv_.position() + conv_.rope_delta);
        const Json fields = ready_fields();
        for (const auto& kv : fields.members()) j.set(kv.first, kv.second);
        emit(j);
      } else if (op == "quit") {
        f.finish();
        emit(reply("bye"));
        return false;
      } else {
        throw RequestError("op: unknown '" + op + "' (expected generate, cancel, bench, reset, save, load, info or "
                           "quit)");
      }
    } catch (const RequestError& e) {
      error(e.what(), op);
    } catch (const Failure& e) {
      error(e.what(), op);  // e.g. a snapshot from another bundle: the request failed, the model is fine
    }
    return true;
  }

  void simple_ok(Fields& f, const char* op) {
    f.finish();
    Json j = reply("ok");
    j.set("op", op);
    emit(j);
  }

  void generate(Fields& f, int64_t seq) {
    const std::vector<int64_t> prompt = f.int_list("prompt_ids", true);
    const int64_t max_new = f.integer("max_new_tokens", 64, 0);
    SamplingConfig cfg;
    cfg.temperature = f.number("temperature", 0.0);
    cfg.top_k = f.integer("top_k", 0, 0);
    cfg.top_p = f.number("top_p", 1.0);
    cfg.repetition_penalty = f.number("repetition_penalty", 1.0);
    cfg.seed = static_cast<uint64_t>(f.integer("seed", 0, 0));
    const bool stop_at_stop_ids = f.boolean("stop_at_stop_ids", true);
    const bool cont = f.boolean("continue", false);
    const Json* image_field = f.get("image");
    f.finish();
    if (const std::string why = cfg.invalid_field(); !why.empty()) throw RequestError(why);
    const std::unique_ptr<RequestImage> image = image_field ? request_image(*image_field) : nullptr;

    std::vector<int64_t> feed = cont ? conv_.pending : std::vector<int64_t>{};
    const size_t pending = feed.size();
    feed.insert(feed.end(), prompt.begin(), prompt.end());
    const int64_t start = cont ? conv_.position() : 0;
    if (feed.empty()) throw RequestError("prompt_ids: empty, and no token is pending from an earlier reply");
    for (auto t : prompt)
      if (t < 0 || t >= b_.vocab)
        throw RequestError("prompt_ids: token " + std::to_string(t) + " is outside the vocabulary 0.." +
                           std::to_string(b_.vocab - 1));
    // An image, or a turn after one (whose rotary positions run behind the slots), goes through the embeddings
    // methods; a text-only session keeps forward/decode_token.
    const int64_t rope_delta = cont ? conv_.rope_delta : 0;
    std::optional<ImagePromptLayout> layout;
    if (image || rope_delta != 0) {
      try {
        layout = layout_image_prompt(*b_.vision, feed, pending, image ? image->size : nullptr, start + rope_delta,
                                     "prompt_ids");
      } catch (const std::runtime_error& e) {
        throw RequestError(e.what());
      }
    }
    const int64_t n = layout ? static_cast<int64_t>(layout->tokens.size()) : static_cast<int64_t>(feed.size());
    if (start + n > b_.max_seq_len)
      throw RequestError("prompt_ids: " + std::to_string(n) + " tokens" +
                         (image ? " (the image's " + std::to_string(image->size->tokens) + " included)" : "") +
                         " do not fit: position " + std::to_string(start) + " + " + std::to_string(n) +
                         " > the bundle's context of " + std::to_string(b_.max_seq_len) + " tokens (" +
                         std::to_string(b_.max_seq_len - start) + " left); reset, or send a shorter prompt");

    std::vector<int64_t> ids;
    std::string stop_reason = "max_new_tokens";
    double prefill_s = 0, decode_s = 0, ttft_s = 0, encode_s = 0;
    int64_t steps = 0;
    if (queue_.cancelled(seq)) {
      stop_reason = "cancelled";  // cancelled while queued: the state is left as it was
    } else {
      if (!cont) conv_.reset();
      const auto t0 = clock_type::now();
      if (layout) {
        encode_s = prefill_with_rope(model_, b_, *layout, image ? image->size : nullptr,
                                     image ? image->rgb.data() : nullptr, start, b_.max_embed_tokens, logits_);
        conv_.tokens.insert(conv_.tokens.end(), layout->tokens.begin(), layout->tokens.end());
        conv_.rope_delta = layout->next_rope - conv_.position();
      } else {
        model_.prefill(feed.data(), feed.size(), start, b_.max_prefill, logits_);
        conv_.tokens.insert(conv_.tokens.end(), feed.begin(), feed.end());
      }
      conv_.pending.clear();
      prefill_s = now_s(t0) - encode_s;
      ttft_s = prefill_s + encode_s;
      Sampler sampler(cfg);
      auto t_prev = t0;
      for (int64_t i = 0; i < max_new; ++i) {
        const int64_t tok = sampler(logits_.data(), b_.vocab, conv_.tokens);
        const auto t_tok = clock_type::now();
        const double ms = std::chrono::duration<double, std::milli>(t_tok - t_prev).count();
        t_prev = t_tok;
        if (i == 0) ttft_s = now_s(t0);
        ids.push_back(tok);
        Json line = reply("token");
        line.set("token", tok);
        line.set("index", i);
        line.set("ms", ms);
        emit(line);
        if (stop_at_stop_ids && b_.stop_ids.count(tok)) { stop_reason = "stop_id"; break; }
        if (i == max_new - 1) break;
        if (conv_.position() >= b_.max_seq_len) { stop_reason = "context_full"; break; }
        if (queue_.cancelled(seq)) { stop_reason = "cancelled"; break; }
        const auto t1 = clock_type::now();
        if (conv_.rope_delta != 0) model_.decode_rope(tok, conv_.position(), conv_.position() + conv_.rope_delta, logits_);
        else model_.decode(tok, conv_.position(), logits_);
        conv_.tokens.push_back(tok);
        decode_s += now_s(t1);
        ++steps;
      }
      if (!ids.empty()) conv_.pending = {ids.back()};
    }
    Json done = reply("done");
    Json toks = Json::array();
    for (auto t : ids) toks.push(t);
    done.set("tokens", std::move(toks));
    done.set("stop_reason", stop_reason);
    done.set("prompt_tokens", static_cast<int64_t>(prompt.size()));
    done.set("position", conv_.position());
    done.set("ttft_ms", ttft_s * 1e3);
    done.set("prefill_tok_s", prefill_s > 0 ? Json(static_cast<double>(n) / prefill_s) : Json());
    done.set("decode_tok_s", steps > 0 ? Json(static_cast<double>(steps) / decode_s) : Json());
    done.set("prefill_ms", prefill_s * 1e3);
    done.set("decode_ms", decode_s * 1e3);
    if (image) {
      done.set("image_encode_ms", encode_s * 1e3);  // included in ttft_ms, not in prefill_ms
      done.set("image_tokens", image->size->tokens);
    }
    if (b_.vision) done.set("rope_position", conv_.position() + conv_.rope_delta);
    emit(done);
  }

  // The generate request's `image` field: {"width": W, "height": H, "rgb_base64": "..."}, at one of the bundle's sizes.
  std::unique_ptr<RequestImage> request_image(const Json& field) const {
    if (!field.is_object())
      throw RequestError("image: expected {\"width\": W, \"height\": H, \"rgb_base64\": \"...\"}, got " +
                         field.dump(0).substr(0, 80));
    if (!b_.vision)
      throw RequestError("image: this bundle has no vision section (exported from a checkpoint without a vision "
                         "tower); it takes no images");
    for (const auto& kv : field.members())
      if (kv.first != "width" && kv.first != "height" && kv.first != "rgb_base64")
        throw RequestError("image." + kv.first + ": unknown field (image takes width, height, rgb_base64)");
    auto dimension = [&](const char* name) {
      const Json* v = field.find(name);
      if (!v || !v->is_number() || std::floor(v->as_double()) != v->as_double() || v->as_double() < 1 ||
          v->as_double() > 1e6)
        throw RequestError(std::string("image.") + name + ": required, a positive integer (pixels)");
      return v->as_int();
    };
    const int64_t width = dimension("width"), height = dimension("height");
    auto image = std::make_unique<RequestImage>();
    try {
      image->size = &b_.vision->size_for(height, width, "image");
    } catch (const std::runtime_error& e) {
      throw RequestError(e.what());
    }
    const Json* data = field.find("rgb_base64");
    if (!data || !data->is_string()) throw RequestError("image.rgb_base64: required, the RGB bytes in base64");
    try {
      image->rgb = base64_decode(data->as_string(), "image.rgb_base64");
    } catch (const std::runtime_error& e) {
      throw RequestError(e.what());
    }
    const size_t want = static_cast<size_t>(width * height * 3);
    if (image->rgb.size() != want)
      throw RequestError("image.rgb_base64: " + std::to_string(image->rgb.size()) + " bytes; a " +
                         std::to_string(height) + "x" + std::to_string(width) + " (HxW) RGB image has " +
                         std::to_string(want) + " (3 bytes per pixel, rows top to bottom)");
    return image;
  }

  void bench(Fields& f) {
    const auto t_start = clock_type::now();
    const std::vector<int64_t> ids = f.int_list("prompt_ids", false);
    std::vector<int64_t> lens = f.int_list("prompt_lens", false);
    BenchSettings s;
    s.gen = f.integer("gen", 64, 0);
    s.runs = static_cast<int>(f.integer("runs", 5, 1));
    s.warmup = static_cast<int>(f.integer("warmup", 1, 0));
    const uint64_t seed = static_cast<uint64_t>(f.integer("seed", 0, 0));
    s.stop_at_stop_ids = f.boolean("stop_at_stop_ids", false);
    const bool image_rows = f.boolean("images", true);
    s.chunk = b_.max_prefill;
    f.finish();
    if (!ids.empty() && !lens.empty()) throw RequestError("prompt_ids, prompt_lens: give one of them, not both");
    for (auto n : lens)
      if (n < 1) throw RequestError("prompt_lens: lengths must be >= 1, got " + std::to_string(n));
    const PromptSet ps = make_prompts(b_, ids, lens, seed, "token ids from the request's prompt_ids");
    try {
      check_prompts(b_, ps, s.gen, "prompt_ids", "gen");
    } catch (const Failure& e) {
      throw RequestError(e.what());
    }
    // Every run starts at position 0, which resets the state: the conversation is gone afterwards.
    conv_.reset();
    BenchOutcome outcome = run_benchmark(model_, b_, ps, s, nullptr);
    if (b_.vision && image_rows)
      outcome.images = bench_images(model_, b_, s.runs, s.warmup, seed, b_.max_embed_tokens, outcome.notes);
    outcome.notes.push("energy not sampled: serve mode leaves battery sampling to the app");
    Json j = reply("bench");
    j.set("result", bench_report(b_, ps, s, load_, outcome, Json(), o_.emulated, t_start));
    emit(j);
  }

  static std::string absolute_path(Fields& f) {
    const std::string path = f.string("path");
    if (path.empty() || path[0] != '/') throw RequestError("path: must be an absolute path, got '" + path + "'");
    return path;
  }

  void save(Fields& f) {
    const std::string path = absolute_path(f);
    f.finish();
    const std::vector<std::vector<uint8_t>> state = model_.read_state();
    const int64_t pos = conv_.position();
    SafetensorsFile file;
    file.metadata = {{"format", kSnapshotFormat}, {"version", kSnapshotVersion}, {"bundle_hash", b_.hash},
                     {"position", std::to_string(pos)}, {"tokens", json_list(conv_.tokens)},
                     {"pending", json_list(conv_.pending)}};
    // runtime/session.py's key: rotary position minus slot. Only a session holding an image has one, so text
    // snapshots stay as they were (absent reads as 0 on both sides).
    if (conv_.rope_delta != 0) file.metadata.push_back({"rope_offset", std::to_string(conv_.rope_delta)});
    for (size_t i = 0; i < b_.buffers.size(); ++i) {
      const StateBuffer& sb = b_.buffers[i];
      NamedTensor t;
      t.name = sb.name;
      t.dtype = safetensors_dtype_of(sb.dtype);
      t.shape = sb.shape;
      if (sb.seq_axis < 0) {
        t.data = state[i];
      } else {
        // Positions past the current one hold nothing the model can attend to (as runtime/session.py trims).
        // [outer, seq, inner] -> [outer, pos, inner]
        size_t outer = 1, inner = safetensors_element_size(t.dtype);
        for (int d = 0; d < sb.seq_axis; ++d) outer *= static_cast<size_t>(sb.shape[d]);
        for (size_t d = static_cast<size_t>(sb.seq_axis) + 1; d < sb.shape.size(); ++d)
          inner *= static_cast<size_t>(sb.shape[d]);
        const size_t seq = static_cast<size_t>(sb.shape[static_cast<size_t>(sb.seq_axis)]);
        t.shape[static_cast<size_t>(sb.seq_axis)] = pos;
        t.data.resize(outer * static_cast<size_t>(pos) * inner);
        for (size_t o = 0; o < outer; ++o)
          std::memcpy(t.data.data() + o * static_cast<size_t>(pos) * inner, state[i].data() + o * seq * inner,
                      static_cast<size_t>(pos) * inner);
      }
      file.tensors.push_back(std::move(t));
    }
    int64_t bytes = 0;
    try {
      bytes = write_safetensors(path, file);
    } catch (const std::runtime_error& e) {
      throw RequestError(std::string("path: ") + e.what());
    }
    Json j = reply("ok");
    j.set("op", "save");
    j.set("path", path);
    j.set("bytes", bytes);
    j.set("position", pos);
    emit(j);
  }

  static std::vector<int64_t> id_list(const std::string& path, const std::string& key, const std::string* text) {
    if (!text) throw RequestError("path: " + path + ": snapshot header lacks '" + key + "'");
    std::vector<int64_t> out;
    try {
      const Json list = Json::parse(*text, path + " header " + key);
      for (const auto& v : list.items()) out.push_back(v.as_int());
    } catch (const std::runtime_error& e) {
      throw RequestError(std::string("path: ") + path + ": snapshot header '" + key + "' is not a list of ids: " + e.what());
    }
    return out;
  }

  void load(Fields& f) {
    const std::string path = absolute_path(f);
    f.finish();
    if (access(path.c_str(), R_OK) != 0) throw RequestError("path: " + path + ": no such readable file");
    SafetensorsFile file;
    try {
      file = read_safetensors(path);
    } catch (const std::runtime_error& e) {
      throw RequestError(std::string("path: ") + e.what());
    }
    const std::string* format = file.meta("format");
    const std::string* version = file.meta("version");
    if (!format || *format != kSnapshotFormat || !version || *version != kSnapshotVersion)
      throw RequestError("path: " + path + ": not a qwen-mobile snapshot v" + kSnapshotVersion + " (header format=" +
                         (format ? *format : "none") + ", version=" + (version ? *version : "none") + ")");
    const std::string* hash = file.meta("bundle_hash");
    if (!hash || *hash != b_.hash)
      throw RequestError("path: " + path + " was saved from bundle " + (hash ? hash->substr(0, 12) : "?") +
                         "..., not from " + b_.dir + " (" + b_.hash.substr(0, 12) + "...); refusing to load it: a "
                         "state only means something to the exact weights that wrote it");
    const std::vector<int64_t> tokens = id_list(path, "tokens", file.meta("tokens"));
    const std::vector<int64_t> pending = id_list(path, "pending", file.meta("pending"));
    const std::string* pos_text = file.meta("position");
    const int64_t pos = pos_text ? std::atoll(pos_text->c_str()) : -1;
    if (pos != static_cast<int64_t>(tokens.size()) || pos > b_.max_seq_len || pending.size() > 1)
      throw RequestError("path: " + path + ": snapshot header position " + (pos_text ? *pos_text : "none") +
                         " does not match its " + std::to_string(tokens.size()) + " tokens (context " +
                         std::to_string(b_.max_seq_len) + ")");
    int64_t rope_delta = 0;
    if (const std::string* rope = file.meta("rope_offset")) {
      char* end = nullptr;
      const long long r = std::strtoll(rope->c_str(), &end, 10);
      if (rope->empty() || *end != '\0' || r > 0 || r < -pos)
        throw RequestError("path: " + path + ": snapshot header rope_offset '" + *rope + "' is not an integer in " +
                           std::to_string(-pos) + "..0");
      if (r != 0 && !b_.vision)
        throw RequestError("path: " + path + ": the snapshot holds an image (rope_offset " + *rope + "), but this "
                           "bundle has no vision section");
      rope_delta = r;
    }
    for (const auto& list : {tokens, pending})
      for (auto t : list)
        if (t < 0 || t >= b_.vocab)
          throw RequestError("path: " + path + ": snapshot token " + std::to_string(t) + " is outside the vocabulary");
    std::vector<std::vector<uint8_t>> full;
    for (const StateBuffer& sb : b_.buffers) {
      const NamedTensor* t = file.tensor(sb.name);
      if (!t) throw RequestError("path: " + path + ": snapshot lacks state buffer '" + sb.name + "'");
      std::vector<int64_t> want = sb.shape;
      if (sb.seq_axis >= 0) want[static_cast<size_t>(sb.seq_axis)] = pos;
      if (t->shape != want || t->dtype != safetensors_dtype_of(sb.dtype))
        throw RequestError("path: " + path + ": snapshot buffer '" + sb.name + "' is " + t->dtype + " " +
                           json_list(t->shape) + ", the bundle expects " + safetensors_dtype_of(sb.dtype) + " " +
                           json_list(want));
      if (sb.seq_axis < 0) {
        full.push_back(t->data);
        continue;
      }
      // [outer, pos, inner] -> [outer, seq, inner], zeros past the position.
      size_t outer = 1, inner = safetensors_element_size(t->dtype);
      for (int d = 0; d < sb.seq_axis; ++d) outer *= static_cast<size_t>(sb.shape[d]);
      for (size_t d = static_cast<size_t>(sb.seq_axis) + 1; d < sb.shape.size(); ++d)
        inner *= static_cast<size_t>(sb.shape[d]);
      const size_t seq = static_cast<size_t>(sb.shape[static_cast<size_t>(sb.seq_axis)]);
      std::vector<uint8_t> padded(sb.bytes, 0);
      for (size_t o = 0; o < outer; ++o)
        std::memcpy(padded.data() + o * seq * inner, t->data.data() + o * static_cast<size_t>(pos) * inner,
                    static_cast<size_t>(pos) * inner);
      full.push_back(std::move(padded));
    }
    model_.write_state(full);
    conv_.tokens = tokens;
    conv_.pending = pending;
    conv_.rope_delta = rope_delta;
    Json j = reply("ok");
    j.set("op", "load");
    j.set("path", path);
    j.set("position", pos);
    emit(j);
  }

  const Options& o_;
  const Bundle& b_;
  Model& model_;
  const LoadInfo& load_;
  RequestQueue& queue_;
  Conversation conv_;
  std::vector<float> logits_;
  Json id_;  // the current request's id, echoed on every line answering it
};

int run_serve(const Options& o) {
  // Nothing but protocol lines on stdout; a bundle that cannot be loaded is reported as one.
  std::unique_ptr<Bundle> b;
  std::unique_ptr<Model> model;
  LoadInfo load;
  try {
    b = std::make_unique<Bundle>(open_bundle(o.bundle, o.verify));
    load.threads = init_runtime(b->manifest, o.threads);
    const auto t_load = clock_type::now();
    model = std::make_unique<Model>(*b, true, nullptr);
    load.ms = now_s(t_load) * 1e3;
    load.rss_bytes = rss_bytes();
    load.arena_bytes = model->arena_bytes();
  } catch (const std::exception& e) {
    Json j = Json::object();
    j.set("event", "error");
    j.set("message", e.what());
    std::fputs((j.dump(0) + "\n").c_str(), stdout);
    std::fflush(stdout);
    throw;
  }
  RequestQueue queue;
  queue.start();
  Server server(o, *b, *model, load, queue);
  const int rc = server.serve();
  // The reader thread may be blocked in read(): leave without running destructors under it.
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(rc);
}

}  // namespace
}  // namespace qwen_bench

int main(int argc, char** argv) {
  try {
    const qwen_bench::Options o = qwen_bench::parse_args(argc, argv);
    if (!o.power_replay.empty()) return qwen_bench::run_replay(o);
    return o.serve ? qwen_bench::run_serve(o) : qwen_bench::run_bench(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qwen-bench: error: %s\n", e.what());
    return 1;
  }
}
