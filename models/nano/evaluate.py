"""Score nano checkpoints on the held-out text, so an old and a new checkpoint are compared on the same tokens.

    python models/nano/prepare.py                        # writes the held-out streams into --data
    python models/nano/evaluate.py OLD_DIR models/nano   # one line per checkpoint and stream
    python models/nano/evaluate.py OLD_DIR models/nano --loops 64   # also: how often greedy text loops

Streams: the held-out packages (whole packages never trained on, ``prepare.PACKAGES``) and the held-out
stdlib files. Each is scored on ``--windows`` windows of 512 tokens spread evenly over it (0 = every
non-overlapping window), each window alone. Perplexity is per token of the tokenizer in ``--data``'s
streams (both nanos use the same tokenizer, so per-token numbers compare directly); bits per byte divides
the total NLL by the UTF-8 bytes of the predicted tokens, which holds across tokenizers.

``--loops N`` measures greedy repetition on more than the four demo prompts: N prefixes of 48 tokens at evenly spaced
places in the held-out packages, each continued greedily for 64 tokens. Reported: the share of continuations in
which a non-blank line (indentation stripped) repeats, and the share of continuation tokens that complete a 4-gram
already seen in the prompt or continuation (a within-line loop such as ``n, n, n, n`` shows there, not as a line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from train import (  # run as a script: models/nano/ is on sys.path
    repeats_a_line,
    score,
    token_byte_lengths,
    windows_of,
)


def loop_counts(tok, out: list[int], prefix_len: int) -> tuple[bool, int, int]:
    """(a non-blank line repeats in the continuation, continuation tokens completing a seen 4-gram, tokens scored)."""
    seen = {tuple(out[i: i + 4]) for i in range(prefix_len - 3)}
    repeated = 0
    for i in range(prefix_len - 3, len(out) - 3):  # the 4-gram ending at each continuation token
        repeated += tuple(out[i: i + 4]) in seen
        seen.add(tuple(out[i: i + 4]))
    return repeats_a_line(tok.decode(out[prefix_len:])), repeated, len(out) - prefix_len


@torch.inference_mode()
def greedy_loops(model, ids: np.ndarray, prefixes: int, prefix_len: int = 48, new_tokens: int = 64,
                 temperature: float = 0.0, repetition_penalty: float = 1.0) -> dict:
    """Greedy (or, with temperature > 0, seeded top-p 0.9 sampled) continuations vs the held-out text's own next
    tokens, scored the same way (code repeats itself too). A repetition penalty applies before either, as in
    runtime/sampling.py and transformers (every token id of prompt and continuation so far)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model.name_or_path) / "tokenizer.json"))
    starts = np.linspace(0, len(ids) - prefix_len - new_tokens - 1, prefixes).astype(int)
    counts = {"greedy": [0, 0, 0], "text": [0, 0, 0]}
    sampling = (dict(do_sample=True, temperature=temperature, top_p=0.9, top_k=0) if temperature
                else dict(do_sample=False))
    sampling["repetition_penalty"] = repetition_penalty
    for s in starts.tolist():
        prompt = torch.tensor(ids[s: s + prefix_len], dtype=torch.long)[None]  # [1, prefix_len]
        torch.manual_seed(s)  # a sampled run is reproducible per prefix
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             pad_token_id=model.config.eos_token_id, **sampling)[0].tolist()
        truth = ids[s: s + prefix_len + new_tokens].tolist()
        for name, seq in (("greedy", out), ("text", truth)):
            line, rep, n = loop_counts(tok, seq, prefix_len)
            counts[name] = [counts[name][0] + line, counts[name][1] + rep, counts[name][2] + n]
    return dict(prefixes=len(starts), new_tokens=new_tokens, temperature=temperature,
                repetition_penalty=repetition_penalty,
                repeated_line_share=counts["greedy"][0] / len(starts),
                repeated_4gram_share=counts["greedy"][1] / counts["greedy"][2],
                text_repeated_line_share=counts["text"][0] / len(starts),
                text_repeated_4gram_share=counts["text"][1] / counts["text"][2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="Hugging Face folders (config.json, model.safetensors)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"), help="prepare.py's token streams")
    ap.add_argument("--windows", type=int, default=64, help="windows per stream (0 = all non-overlapping)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loops", type=int, default=0, metavar="N", help="also measure greedy loops on N prefixes")
    ap.add_argument("--loop-temperature", type=float, default=0.0,
                    help="--loops with sampling at this temperature (top-p 0.9) instead of greedy")
    ap.add_argument("--loop-repetition-penalty", type=float, default=1.0,
                    help="--loops with this repetition penalty (1 = off), as qwen-mobile run --repetition-penalty")
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
        if args.loops:
            r = greedy_loops(model, np.load(args.data / streams["heldout packages"]), args.loops,
                             temperature=args.loop_temperature, repetition_penalty=args.loop_repetition_penalty)
            results.append(dict(checkpoint=str(ckpt), stream="greedy loops, heldout packages", **r))
            how = f"sampled at T={args.loop_temperature}" if args.loop_temperature else "greedy"
            if args.loop_repetition_penalty != 1.0:
                how += f", repetition penalty {args.loop_repetition_penalty}"
            print(f"{ckpt}  {how} loops: {r['repeated_line_share']:.0%} of {r['prefixes']} continuations repeat a "
                  f"line, {r['repeated_4gram_share']:.0%} of their tokens complete a repeated 4-gram (the held-out "
                  f"text's own next tokens: {r['text_repeated_line_share']:.0%}, {r['text_repeated_4gram_share']:.0%})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
