"""What an aarch64 core executes per token, counted exactly under qemu: ours (`qwen-bench` on an 8da4w bundle) against
llama.cpp (`llama-bench` on a Q4_0 GGUF of the same weights). `python -m bench.arm_cost --help`; see bench/README.md
("ARM cost") and /work/shared/arm-cost-proxy.md for why the counts are a proxy and not time."""
