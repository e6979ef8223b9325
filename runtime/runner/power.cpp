#include "power.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

namespace qwen_bench {
namespace {

const char* const kPhases[] = {"idle", "warmup", "run"};

// Bounds of the unit guesses. A phone running a model draws 50 mA - 5 A, so a largest |current_now| below 10,000
// cannot be µA (10 mA) and is taken as mA. Battery voltages are 3-5 V: ≥ 100,000 is µV, ≥ 100 is mV, else V.
constexpr double kMilliAmpCeiling = 10000;
constexpr double kMicroVoltFloor = 100000;
constexpr double kMilliVoltFloor = 100;
// Thermal zones report m°C; some report whole °C. Nothing on a phone is at 1,000 °C.
constexpr double kMilliCelsiusFloor = 1000;
// The thermal series is kept at about this rate: sampling runs at up to 10 Hz, but temperature moves in seconds
// and a series per zone at 10 Hz would dominate the JSON.
constexpr double kThermalPeriodS = 1.0;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Json opt_num(std::optional<double> v) { return v ? Json(*v) : Json(); }

}  // namespace

Json summarize_energy(const PowerTrace& trace, CurrentUnit unit) {
  const auto& S = trace.samples;
  Json e = Json::object();
  e.set("source", trace.source.empty() ? std::string("(unknown)") : trace.source);
  e.set("sample_hz", trace.sample_hz > 0 ? trace.sample_hz : 1.0);
  Json notes = Json::array();

  bool has_i = false, has_v = false, has_q = false, has_cap = false, has_bt = false, has_zone = false;
  double max_i = 0, max_v = 0;
  std::vector<double> nonzero_i;
  for (const auto& s : S) {
    if (s.current_now) {
      has_i = true;
      max_i = std::max(max_i, std::fabs(double(*s.current_now)));
      if (*s.current_now != 0) nonzero_i.push_back(double(*s.current_now));
    }
    if (s.voltage_now) { has_v = true; max_v = std::max(max_v, std::fabs(double(*s.voltage_now))); }
    has_q |= bool(s.charge_counter);
    has_cap |= bool(s.capacity);
    has_bt |= bool(s.battery_temp);
    has_zone |= !s.thermal.empty();
  }
  Json absent = Json::array();
  if (!has_i) absent.push("current_now");
  if (!has_v) absent.push("voltage_now");
  if (!has_q) absent.push("charge_counter");
  if (!has_cap) absent.push("capacity");
  if (!has_bt) absent.push("battery_temp");
  if (!has_zone) absent.push("thermal_zones");

  // Units and sign, decided once per trace so that one odd sample cannot flip them mid-run.
  double i_scale = 1e-6;
  std::string i_unit = "uA";
  if (unit == CurrentUnit::MilliAmp || (unit == CurrentUnit::Auto && has_i && max_i < kMilliAmpCeiling)) {
    i_scale = 1e-3;
    i_unit = "mA";
  }
  if (unit == CurrentUnit::Auto) i_unit += " (inferred)";
  // The battery discharges during a benchmark, so the usual sign of current_now is the discharge sign. Samples of
  // the other sign (a charger, or USB power through adb) then count as negative power instead of being folded in.
  const double sign = (!nonzero_i.empty() && median(nonzero_i) < 0) ? -1.0 : 1.0;
  size_t against = 0;
  for (double v : nonzero_i) against += (v * sign < 0);
  if (against) {
    notes.push(std::to_string(against) + " of " + std::to_string(nonzero_i.size()) +
               " current samples have the charging sign: was a charger or USB power connected? Those intervals "
               "count as negative power");
  }
  if (!trace.status.empty() && trace.status != "Discharging" && trace.status != "Not charging") {
    notes.push("battery status was '" + trace.status + "', not 'Discharging': the battery current is not the "
               "device's consumption (unplug USB, or use `dumpsys battery unplug` and a Wi-Fi adb connection)");
  }
  double v_scale = 1e-6;
  std::string v_unit = "uV";
  if (has_v && max_v < kMicroVoltFloor) {
    if (max_v >= kMilliVoltFloor) { v_scale = 1e-3; v_unit = "mV"; } else { v_scale = 1.0; v_unit = "V"; }
  }

  // Trapezoidal ∫V·I dt between consecutive usable samples of the same phase. A sample missing a reading (a failed
  // read) is bridged over; a sample of another phase breaks the chain, so the idle baseline, warmups and the run
  // never bleed into each other.
  std::map<std::string, std::pair<double, double>> acc;  // phase -> (joules, seconds)
  auto power = [&](const PowerSample& s) {
    return sign * double(*s.current_now) * i_scale * double(*s.voltage_now) * v_scale;
  };
  const PowerSample* prev = nullptr;
  for (const auto& s : S) {
    if (prev && s.phase != prev->phase) prev = nullptr;
    if (!s.current_now || !s.voltage_now) continue;
    if (prev && s.t_s > prev->t_s) {
      const double dt = s.t_s - prev->t_s;
      auto& slot = acc[s.phase];
      slot.first += 0.5 * (power(*prev) + power(s)) * dt;
      slot.second += dt;
    }
    prev = &s;
  }
  auto phase_time = [&](const char* p) { auto it = acc.find(p); return it == acc.end() ? 0.0 : it->second.second; };
  auto phase_energy = [&](const char* p) { auto it = acc.find(p); return it == acc.end() ? 0.0 : it->second.first; };
  const double t_run = phase_time("run"), t_idle = phase_time("idle");
  std::optional<double> gross, idle_w, mean_w, net, per_token;
  const double t_wall = trace.run_wall_s > 0 ? trace.run_wall_s : t_run;
  if (t_run > 0) {
    mean_w = phase_energy("run") / t_run;
    gross = *mean_w * t_wall;
    if (t_idle > 0) {
      idle_w = phase_energy("idle") / t_idle;
      net = (*mean_w - *idle_w) * t_wall;
    } else {
      net = gross;
      notes.push("no idle baseline (--idle-seconds 0 or too few idle samples): joules are not baseline-subtracted");
    }
    if (trace.tokens > 0) per_token = *net / double(trace.tokens);
  } else if (has_i && has_v) {
    notes.push("fewer than two power samples in the measured run: raise --power-hz or --runs");
  }
  e.set("joules", opt_num(net));
  e.set("joules_per_token", opt_num(per_token));
  e.set("mean_power_w", opt_num(mean_w));
  e.set("idle_power_w", opt_num(idle_w));

  // Charge and capacity deltas over the measured run: first and last run samples that have them. Positive means
  // drawn from the battery. charge_counter often moves in steps of ~1 mAh, so short runs read 0.
  auto run_delta = [&](auto member) -> std::optional<double> {
    const PowerSample* first = nullptr;
    const PowerSample* last = nullptr;
    for (const auto& s : S) {
      if (s.phase != "run" || !(s.*member)) continue;
      if (!first) first = &s;
      last = &s;
    }
    if (!first || first == last) return std::nullopt;
    return double(*(first->*member)) - double(*(last->*member));
  };
  e.set("battery_delta_pct", opt_num(run_delta(&PowerSample::capacity)));
  e.set("charge_delta_uah", opt_num(run_delta(&PowerSample::charge_counter)));

  Json thermal = Json::array();
  double last_t = -1e300;
  for (size_t k = 0; k < S.size(); ++k) {
    const auto& s = S[k];
    if (s.t_s - last_t < kThermalPeriodS && k + 1 != S.size()) continue;
    last_t = s.t_s;
    if (s.battery_temp) {
      Json p = Json::object();
      p.set("t_s", s.t_s); p.set("zone", "battery"); p.set("value", double(*s.battery_temp) / 10.0);
      thermal.push(std::move(p));
    }
    for (const auto& z : s.thermal) {
      const double c = std::fabs(double(z.second)) >= kMilliCelsiusFloor ? double(z.second) / 1000.0 : double(z.second);
      Json p = Json::object();
      p.set("t_s", s.t_s); p.set("zone", z.first); p.set("value", c);
      thermal.push(std::move(p));
    }
  }
  e.set("thermal", std::move(thermal));
  e.set("absent_fields", std::move(absent));
  // Beyond the schema's fields: what a reader needs to trust or redo the numbers.
  e.set("gross_joules", opt_num(gross));
  e.set("run_seconds", t_wall);
  e.set("run_sampled_seconds", t_run);
  e.set("idle_seconds", t_idle);
  e.set("tokens", trace.tokens);
  e.set("samples", int64_t(S.size()));
  e.set("current_unit", has_i ? Json(i_unit) : Json());
  e.set("current_sign", has_i ? Json(sign < 0 ? "negative while discharging" : "positive while discharging") : Json());
  e.set("voltage_unit", has_v ? Json(v_unit) : Json());
  e.set("status", trace.status.empty() ? Json() : Json(trace.status));
  e.set("notes", std::move(notes));
  return e;
}

// ---- trace files ----------------------------------------------------------------------------------------------

PowerTrace read_trace(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open power trace");
  PowerTrace t;
  std::string line;
  int lineno = 0;
  bool header = false;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos || line[line.find_first_not_of(" \t")] == '#') continue;
    const std::string where = path + " line " + std::to_string(lineno);
    Json j = Json::parse(line, where);
    try {
      if (!header) {
        if (!j.find("qwen_power_trace"))
          throw std::runtime_error("the first record must be the header with \"qwen_power_trace\": 1");
        t.source = j.find("source") ? j.at("source").as_string() : "";
        t.sample_hz = j.find("sample_hz") ? j.at("sample_hz").as_double() : 0;
        t.status = j.find("status") && !j.at("status").is_null() ? j.at("status").as_string() : "";
        t.tokens = j.find("tokens") ? j.at("tokens").as_int() : 0;
        t.run_wall_s = j.find("run_wall_s") && !j.at("run_wall_s").is_null() ? j.at("run_wall_s").as_double() : 0;
        header = true;
        continue;
      }
      PowerSample s;
      s.t_s = j.at("t").as_double();
      s.phase = j.at("phase").as_string();
      if (std::find(std::begin(kPhases), std::end(kPhases), s.phase) == std::end(kPhases))
        throw std::runtime_error("phase must be idle, warmup or run, got '" + s.phase + "'");
      auto get = [&](const char* k, std::optional<int64_t>& dst) {
        if (const Json* v = j.find(k); v && !v->is_null()) dst = v->as_int();
      };
      get("current_now", s.current_now);
      get("voltage_now", s.voltage_now);
      get("charge_counter", s.charge_counter);
      get("capacity", s.capacity);
      get("battery_temp", s.battery_temp);
      if (const Json* th = j.find("thermal"))
        for (const auto& kv : th->members()) s.thermal.emplace_back(kv.first, kv.second.as_int());
      if (!t.samples.empty() && s.t_s < t.samples.back().t_s) throw std::runtime_error("time goes backwards");
      t.samples.push_back(std::move(s));
    } catch (const std::runtime_error& err) {
      throw std::runtime_error(where + ": " + err.what());
    }
  }
  if (!header) throw std::runtime_error(path + ": empty power trace (no header record)");
  return t;
}

void write_trace(const std::string& path, const PowerTrace& t) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(path + ": cannot write power trace");
  Json h = Json::object();
  h.set("qwen_power_trace", 1);
  h.set("source", t.source);
  h.set("sample_hz", t.sample_hz);
  h.set("status", t.status.empty() ? Json() : Json(t.status));
  h.set("tokens", t.tokens);
  h.set("run_wall_s", t.run_wall_s);
  out << h.dump(0) << "\n";
  for (const auto& s : t.samples) {
    Json j = Json::object();
    j.set("t", s.t_s);
    j.set("phase", s.phase);
    auto put = [&](const char* k, const std::optional<int64_t>& v) { if (v) j.set(k, *v); };
    put("current_now", s.current_now);
    put("voltage_now", s.voltage_now);
    put("charge_counter", s.charge_counter);
    put("capacity", s.capacity);
    put("battery_temp", s.battery_temp);
    if (!s.thermal.empty()) {
      Json th = Json::object();
      for (const auto& z : s.thermal) th.set(z.first, z.second);
      j.set("thermal", std::move(th));
    }
    out << j.dump(0) << "\n";
  }
  if (!out) throw std::runtime_error(path + ": write failed");
}

// ---- live sampling --------------------------------------------------------------------------------------------

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (in) std::getline(in, s);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') out.emplace_back(e->d_name);
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// sysfs attributes are re-read from offset 0 on a kept descriptor: cheaper than open/close at 10 Hz and it works
// the same on the plain files of a test tree.
std::optional<int64_t> read_int(int fd) {
  if (fd < 0) return std::nullopt;
  char buf[64];
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return std::nullopt;
  buf[n] = 0;
  char* end = nullptr;
  const long long v = std::strtoll(buf, &end, 10);
  if (end == buf) return std::nullopt;
  return static_cast<int64_t>(v);
}

int open_ro(const std::string& path) { return ::open(path.c_str(), O_RDONLY | O_CLOEXEC); }

}  // namespace

std::unique_ptr<PowerSampler> PowerSampler::open(const std::string& root, double hz, std::string* why) {
  std::string base = root == "/" ? std::string() : root;
  while (!base.empty() && base.back() == '/') base.pop_back();
  const std::string ps = base + "/sys/class/power_supply";
  // The battery is the supply whose `type` says so; Qualcomm devices also expose "bms" and USB/AC supplies, whose
  // current is not the battery's. Among batteries prefer one named "battery", then any with current_now.
  std::string best;
  int best_score = -1;
  for (const auto& name : list_dir(ps)) {
    const std::string dir = ps + "/" + name;
    const std::string type = read_text(dir + "/type");
    if (type != "Battery") continue;
    const bool has_i = access((dir + "/current_now").c_str(), R_OK) == 0;
    const bool has_v = access((dir + "/voltage_now").c_str(), R_OK) == 0;
    if (!has_i && !has_v) continue;
    const int score = (name == "battery") * 4 + has_i * 2 + has_v;
    if (score > best_score) { best_score = score; best = dir; }
  }
  if (best.empty()) {
    if (why) *why = "no battery with a readable current_now or voltage_now under " + ps;
    return nullptr;
  }
  std::unique_ptr<PowerSampler> p(new PowerSampler());
  p->battery_dir_ = best;
  p->hz_ = hz;
  p->status_ = read_text(best + "/status");
  auto attach = [&](File& f, const char* name) { f.name = name; f.fd = open_ro(best + "/" + name); };
  attach(p->current_, "current_now");
  attach(p->voltage_, "voltage_now");
  attach(p->charge_, "charge_counter");
  attach(p->capacity_, "capacity");
  attach(p->temp_, "temp");
  const std::string th = base + "/sys/class/thermal";
  std::set<std::string> seen;
  for (const auto& name : list_dir(th)) {
    if (name.rfind("thermal_zone", 0) != 0) continue;
    File f;
    f.fd = open_ro(th + "/" + name + "/temp");
    if (f.fd < 0) continue;  // permission denied for the shell user on some devices: skipped, not zero
    std::string type = read_text(th + "/" + name + "/type");
    if (type.empty()) type = name;
    if (!seen.insert(type).second) type += "@" + name;  // duplicate zone types exist on some SoCs
    f.name = type;
    p->zones_.push_back(std::move(f));
  }
  return p;
}

PowerSampler::~PowerSampler() {
  if (running_.exchange(false) && thread_.joinable()) thread_.join();
  for (File* f : {&current_, &voltage_, &charge_, &capacity_, &temp_})
    if (f->fd >= 0) ::close(f->fd);
  for (auto& z : zones_) if (z.fd >= 0) ::close(z.fd);
}

PowerSample PowerSampler::read_once(double t) {
  PowerSample s;
  s.t_s = t;
  s.phase = kPhases[phase_.load()];
  s.current_now = read_int(current_.fd);
  s.voltage_now = read_int(voltage_.fd);
  s.charge_counter = read_int(charge_.fd);
  s.capacity = read_int(capacity_.fd);
  s.battery_temp = read_int(temp_.fd);
  for (const auto& z : zones_)
    if (auto v = read_int(z.fd)) s.thermal.emplace_back(z.name, *v);
  return s;
}

void PowerSampler::loop() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto period = std::chrono::duration<double>(1.0 / hz_);
  // Deadlines are absolute (t0 + k·period), so the rate does not drift with the time each read takes.
  for (uint64_t k = 0; running_.load(); ++k) {
    const auto due = t0 + std::chrono::duration_cast<clock::duration>(period * double(k));
    std::this_thread::sleep_until(due);
    if (!running_.load()) break;
    samples_.push_back(read_once(std::chrono::duration<double>(clock::now() - t0).count()));
  }
}

void PowerSampler::start() {
  running_ = true;
  thread_ = std::thread([this] { loop(); });
}

void PowerSampler::set_phase(const char* phase) {
  for (int i = 0; i < 3; ++i)
    if (std::string(phase) == kPhases[i]) phase_ = i;
}

PowerTrace PowerSampler::stop() {
  if (running_.exchange(false) && thread_.joinable()) thread_.join();
  PowerTrace t;
  t.source = battery_dir_;
  t.sample_hz = hz_;
  t.status = status_;
  t.samples = samples_;
  return t;
}

}  // namespace qwen_bench
