"""bench/arm_cost: the counting plugin counts what a known aarch64 loop executes, exactly; counted runs of qwen-bench
are identical from one invocation to the next and grow with the token count (the benchmark's per-token differences
rest on both)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.arm_cost import cli, tools
from bench.arm_cost.counting import run_counted

# One iteration of the loop below, counted by hand from the assembly (A64 encoding classes as the plugin names them).
LOOP_BODY = {
    "simd_fp": 5,  # 3 fmla + 2 sdot
    "dot": 2,
    "ls_simd": 2,  # ld1 (16 bytes), st1 (16 bytes)
    "ls_gp": 1,  # ldr x3 (8 bytes)
    "dp_imm": 2,  # add, subs
    "dp_reg": 1,  # eor
    "branch": 1,  # b.ne
    "insns": 12,
    "bytes_loaded": 24,
    "bytes_stored": 16,
}
LOOP_C = r"""
#include <stdlib.h>
int main(int argc, char** argv) {
  static unsigned char src[64], dst[64];
  long n = atol(argv[1]), k = 0;
  __asm__ volatile(
      "1:\n"
      "ld1 {v0.16b}, [%[s]]\n"
      "fmla v1.4s, v2.4s, v3.4s\n"
      "fmla v4.4s, v2.4s, v3.4s\n"
      "fmla v5.4s, v2.4s, v3.4s\n"
      "sdot v6.4s, v0.16b, v0.16b\n"
      "sdot v7.4s, v0.16b, v0.16b\n"
      "st1 {v0.16b}, [%[d]]\n"
      "ldr x3, [%[s], #16]\n"
      "eor x4, x4, x3\n"
      "add %[k], %[k], #1\n"
      "subs %[n], %[n], #1\n"
      "b.ne 1b\n"
      : [n] "+r"(n), [k] "+r"(k)
      : [s] "r"(src), [d] "r"(dst)
      : "x3", "x4", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "memory", "cc");
  return k > 0 ? 0 : 1;
}
"""


@pytest.fixture(scope="module")
def cache(aarch64_tools) -> Path:  # the cross tools installed (tests/conftest.py), or the module skipped
    c = tools.default_cache()
    c.mkdir(parents=True, exist_ok=True)
    return c


def test_plugin_counts_a_known_loop_exactly(cache, tmp_path):
    plugin = tools.build_plugin(cache)
    (tmp_path / "loop.c").write_text(LOOP_C)
    exe = tmp_path / "loop"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-march=armv8.2-a+dotprod", str(tmp_path / "loop.c"),
                    "-o", str(exe)], check=True)
    runs = [run_counted([exe, n], cpu="cortex-a76", plugin=plugin, workdir=tmp_path / "w",
                        out_prefix=tmp_path / f"loop{n}") for n in (1000, 3000, 1000)]
    assert runs[0].totals == runs[2].totals, "two identical runs differ"
    diff = {k: (runs[1].totals[k] - runs[0].totals[k]) / 2000 for k in runs[0].totals}
    for key, expected in LOOP_BODY.items():
        assert diff[key] == expected, f"{key}: {diff[key]} per iteration, expected {expected}"
    assert diff["mmla"] == 0 and diff["sve"] == 0 and diff["other"] == 0


def test_qwen_bench_counts_are_deterministic_and_scale(cache, q_bundle, tmp_path, capsys):
    common = ["--peers", "ours", "--bundle", str(q_bundle), "--prompt", "4", "--prefill-long", "8", "--top", "5",
              "--cache", str(cache)]
    cli.main(common + ["--gen", "2", "4", "--json", str(tmp_path / "a.json")])
    cli.main(common + ["--gen", "2", "4", "--json", str(tmp_path / "b.json"), "--no-prefill"])
    cli.main(common + ["--gen", "2", "8", "--json", str(tmp_path / "c.json"), "--no-prefill"])
    a, b, c = (json.loads((tmp_path / f"{n}.json").read_text())["profiles"]["a76"] for n in "abc")
    # Determinism: the same runs in another invocation give the same counts in every class and byte, up to the
    # formatting of wall-clock times both runners print (measured: 14 to 206 instructions of 23 M per run).
    for which in ("short", "long"):
        ra, rb = a["runs"]["ours"]["decode"][which], b["runs"]["ours"]["decode"][which]
        for key in ra:
            if key != "vcpus":
                assert abs(ra[key] - rb[key]) <= 2000, (which, key, ra[key], rb[key])
    for key, v in a["per_token"]["ours"]["decode"].items():
        assert abs(v - b["per_token"]["ours"]["decode"][key]) <= 1000, key
    # Scaling: the short runs are the same; 6 decode steps cost about three times 2 (attention over a few more
    # positions adds a little per step), and prefill costs instructions per token too.
    assert abs(c["runs"]["ours"]["decode"]["short"]["insns"] - a["runs"]["ours"]["decode"]["short"]["insns"]) <= 2000
    d2, d6 = a["per_token"]["ours"]["decode"], c["per_token"]["ours"]["decode"]
    assert d2["insns"] > 1e5, d2
    assert d6["insns"] == pytest.approx(d2["insns"], rel=0.05)
    assert d6["simd_fp"] == pytest.approx(d2["simd_fp"], rel=0.05)
    assert a["per_token"]["ours"]["prefill"]["insns"] > 0
    # The profile names our kernels' library and XNNPACK's, and its shares add up to at most the whole.
    top = a["top_functions_decode"]["ours"]
    names = " ".join(r["function"] for r in top)
    assert "libexecutorch_backend_xnnpack.so" in names, names
    assert 0.1 < sum(r["share"] for r in top) <= 1.0 + 1e-9
    assert "per token, profile a76" in capsys.readouterr().out
