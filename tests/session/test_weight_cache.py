"""XNNPACK's packed-weight cache (runtime/kernels/xnnpack_options.cpp): with it, `decode_token` reuses the weights
`forward` packed instead of packing its own copy, and the logits do not change. Each setting runs in its own process
(the option is process-wide and read when a method loads)."""

import json
import subprocess
import sys

CHILD = r"""
import json, sys, torch
from qwen_mobile.runtime.library import load_library
from qwen_mobile.runtime.xnnpack_options import enable_xnnpack_weight_cache
from qwen_mobile.runtime.contract import DECODE_METHOD
from qwen_mobile.runtime.program import load_wheel_kernels
load_library()
from executorch.runtime import Runtime
if sys.argv[2] == "on":
    enable_xnnpack_weight_cache()
load_wheel_kernels(json.loads(sys.argv[3]))
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
program = Runtime.get().load_program(sys.argv[1])
forward = program.load_method("forward")
before = rss()
decode = program.load_method(DECODE_METHOD)
grew = rss() - before
ids = torch.arange(3, 23)[None]  # within the bundle's 32-token prefill bound
first = forward.execute([ids, torch.arange(ids.shape[1])])[0][0, -1]
step = decode.execute([torch.tensor([[int(first.argmax())]]), torch.tensor([ids.shape[1]])])[0][0, -1]
print(json.dumps({"decode_load_rss_growth": grew, "logits": torch.cat([first, step]).tolist()}))
"""


def run_child(pte, cache, namespaces):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(pte), cache, json.dumps(namespaces)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_decode_shares_forwards_packed_weights_and_logits_are_unchanged(nano_bundle):
    manifest = json.loads((nano_bundle / "manifest.json").read_text())
    pte, namespaces = nano_bundle / "model.pte", manifest["program"]["kernel_namespaces"]
    off, on = run_child(pte, "off", namespaces), run_child(pte, "on", namespaces)
    assert on["logits"] == off["logits"]  # bitwise: the cache changes where packed weights live, not what they are
    # nano fp32: XNNPACK packs ~35 MB of linear weights per method. Without the cache `decode_token` adds its own copy.
    assert off["decode_load_rss_growth"] > 20e6, off["decode_load_rss_growth"]
    assert on["decode_load_rss_growth"] < 0.25 * off["decode_load_rss_growth"], (on, off)
