// Battery and thermal sampling from sysfs (Android `adb shell`, Linux phones) and the energy arithmetic.
//
// The arithmetic (`summarize_energy`) is a pure function of a recorded trace, so it is tested on hand-written
// traces (`qwen-bench --power-replay FILE`, tests/native/power_traces/) with the same code path a phone run takes:
// a live run records raw sysfs integers into the same `PowerTrace`, and `--power-log` writes it out for replay.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "json.h"

namespace qwen_bench {

// One reading of every file, exactly as sysfs printed it (units differ by OEM; see summarize_energy).
struct PowerSample {
  double t_s = 0;      // seconds since sampling started
  std::string phase;   // "idle" (baseline), "warmup" (ignored), "run" (measured)
  std::optional<int64_t> current_now;     // µA by the kernel ABI; some OEMs report mA; sign varies
  std::optional<int64_t> voltage_now;     // µV by the ABI; some report mV
  std::optional<int64_t> charge_counter;  // µAh
  std::optional<int64_t> capacity;        // percent
  std::optional<int64_t> battery_temp;    // 0.1 °C
  std::vector<std::pair<std::string, int64_t>> thermal;  // thermal zone type -> temp (m°C, some zones °C)
};

struct PowerTrace {
  std::string source;   // the power_supply folder sampled
  double sample_hz = 0;
  std::string status;   // power_supply `status` at start ("Discharging", ...), empty when absent
  int64_t tokens = 0;   // tokens generated during the "run" phase (the J/token denominator)
  // Wall time the measured runs took by the runner's clock (0 = unknown). The samples bracketing a run can miss up
  // to a period at each end, so energy is mean power × this time rather than the sampled span alone.
  double run_wall_s = 0;
  std::vector<PowerSample> samples;
};

enum class CurrentUnit { Auto, MicroAmp, MilliAmp };

// The bench schema's `energy` object (plus the extra fields documented in runtime/README.md). Never throws for a
// sparse trace: what cannot be computed is null, and the sysfs files the device lacks are in `absent_fields`.
Json summarize_energy(const PowerTrace& trace, CurrentUnit unit = CurrentUnit::Auto);

// JSON lines: a header object {"qwen_power_trace": 1, "source", "sample_hz", "status", "tokens", "run_wall_s"}, then
// one object per sample {"t", "phase", "current_now", "voltage_now", "charge_counter", "capacity", "battery_temp",
// "thermal": {zone: value}}; a file the device lacks is simply not a key. Throws naming the file and line.
PowerTrace read_trace(const std::string& path);
void write_trace(const std::string& path, const PowerTrace& trace);

// Samples ROOT/sys/class/power_supply/<battery> and ROOT/sys/class/thermal/thermal_zone* at a fixed rate on its
// own thread. ROOT is "/" on a device; tests point it at a fake tree.
class PowerSampler {
 public:
  // nullptr (with *why set) when ROOT has no battery with a readable current_now or voltage_now.
  static std::unique_ptr<PowerSampler> open(const std::string& root, double hz, std::string* why);
  ~PowerSampler();

  void start();
  void set_phase(const char* phase);  // takes effect from the next sample
  PowerTrace stop();                  // joins the thread; the trace's `tokens` is left for the caller

 private:
  struct File {
    std::string name;
    int fd = -1;
  };
  PowerSampler() = default;
  void loop();
  PowerSample read_once(double t);

  std::string battery_dir_;
  std::string status_;
  double hz_ = 10;
  File current_, voltage_, charge_, capacity_, temp_;
  std::vector<File> zones_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  std::atomic<int> phase_{0};
  std::vector<PowerSample> samples_;
};

}  // namespace qwen_bench
