"""Check that the peers' artifacts compute the checkpoint's model: logits vs transformers on a few tokens.

    python -m bench.peers.check_parity --checkpoint /tmp/qwen35_rand_tiny --pte A.pte [B.pte] --gguf X.gguf

A speed table means little if a converter silently changed the model (e.g. a mis-ordered V-head reorder for
nv = 2 nk). Meant for the tiny preset (transformers' reference loops are slow at 0.8B). ExecuTorch runs token by
token from position 0; llama.cpp evaluates the tokens in one batch with logits for every position.
Measured on tiny (nv = 2 nk), 8 tokens, |logits| <= 1.2: ET fp32 3.6e-7 max |d|, llama.cpp bf16 GGUF 1.6e-3,
llama.cpp Q4_0 0.052, ET 8da4w+emb4 0.11; argmax agrees at 8/8 positions for all four.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

TOKENS = [5, 17, 99, 300, 42, 7, 256, 11]


def reference_logits(checkpoint: str, tokens=TOKENS) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        return m(torch.tensor([tokens])).logits[0].numpy()


def pte_logits(pte: str, tokens=TOKENS) -> np.ndarray:
    from executorch.extension.pybindings import portable_lib
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401

    p = portable_lib._load_for_executorch(pte)
    rows = [p.forward((torch.tensor([[t]]), torch.tensor([i])))[0].reshape(-1).numpy().copy()
            for i, t in enumerate(tokens)]
    return np.stack(rows)


def gguf_logits(gguf: str, tokens=TOKENS) -> np.ndarray:
    from llama_cpp import Llama

    from ._llamacpp_worker import configure_bufts

    configure_bufts("none", gguf)  # the plain Q4_0 layout: AMX-repacked Q4_0 crashes on AMX hosts (bench/README.md)
    llm = Llama(model_path=gguf, n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)])


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(got - ref).max()), "max_abs_ref": float(np.abs(ref).max()),
            "argmax_agree": int((got.argmax(-1) == ref.argmax(-1)).sum()), "positions": int(ref.shape[0])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--pte", nargs="*", default=[])
    ap.add_argument("--gguf", nargs="*", default=[])
    a = ap.parse_args(argv)
    ref = reference_logits(a.checkpoint)
    out = {p: compare(ref, pte_logits(p)) for p in a.pte}
    out.update({g: compare(ref, gguf_logits(g)) for g in a.gguf})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
