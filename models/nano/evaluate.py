"""Score nano checkpoints on the held-out text, so an old and a new checkpoint are compared on the same tokens.

    python models/nano/prepare.py                        # writes the held-out streams into --data
    python models/nano/evaluate.py OLD_DIR models/nano   # one line per checkpoint and stream

Streams: the held-out packages (whole packages never trained on, ``prepare.PACKAGES``) and the held-out
stdlib files. Each is scored on ``--windows`` windows of 512 tokens spread evenly over it (0 = every
non-overlapping window), each window alone. Perplexity is per token of the tokenizer in ``--data``'s
streams (both nanos use the same tokenizer, so per-token numbers compare directly); bits per byte divides
the total NLL by the UTF-8 bytes of the predicted tokens, which holds across tokenizers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from train import (  # run as a script: models/nano/ is on sys.path
    score,
    token_byte_lengths,
    windows_of,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="Hugging Face folders (config.json, model.safetensors)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"), help="prepare.py's token streams")
    ap.add_argument("--windows", type=int, default=64, help="windows per stream (0 = all non-overlapping)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    streams = {"heldout packages": "heldout_packages.npy", "heldout stdlib": "heldout.npy"}
    results = []
    for ckpt in args.checkpoints:
        if not (ckpt / "config.json").exists():
            raise SystemExit(f"evaluate.py: {ckpt}: no config.json (not a checkpoint folder)")
        tok_file = ckpt / "tokenizer.json"
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        token_bytes = token_byte_lengths(tok_file, model.config.vocab_size)
        for name, file in streams.items():
            path = args.data / file
            if not path.exists():
                raise SystemExit(f"evaluate.py: {path} is missing: run models/nano/prepare.py --data {args.data}")
            ids = np.load(path)
            windows = windows_of(ids, args.seq_len, args.windows or None)  # [N, seq_len]
            r = score(model, windows, token_bytes)
            results.append(dict(checkpoint=str(ckpt), stream=name, windows=len(windows), **r))
            print(f"{ckpt}  {name}: {r['tokens']} tokens, {r['bytes']} bytes: ppl {r['ppl']:.2f}, "
                  f"{r['bits_per_byte']:.4f} bits/byte", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
