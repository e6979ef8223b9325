// runtime/runner/power.cpp's replay alone (read_trace + summarize_energy, the code qwen-bench --power-replay runs),
// built by test_android_logic.py without ExecuTorch so the Java port is checked against the C++ source itself.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "power.h"

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: power_replay TRACE.jsonl [auto|ua|ma]\n");
    return 2;
  }
  qwen_bench::CurrentUnit unit = qwen_bench::CurrentUnit::Auto;
  if (argc == 3 && std::strcmp(argv[2], "ua") == 0) unit = qwen_bench::CurrentUnit::MicroAmp;
  if (argc == 3 && std::strcmp(argv[2], "ma") == 0) unit = qwen_bench::CurrentUnit::MilliAmp;
  try {
    std::printf("%s\n", qwen_bench::summarize_energy(qwen_bench::read_trace(argv[1]), unit).dump(0).c_str());
  } catch (const std::exception& err) {
    std::fprintf(stderr, "%s\n", err.what());
    return 1;
  }
  return 0;
}
