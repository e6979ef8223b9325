"""Score nano checkpoints on the held-out text, so an old and a new checkpoint are compared on the same tokens.

    python models/nano/prepare.py                        # writes the held-out streams into --data
    python models/nano/evaluate.py OLD_DIR models/nano   # one line per checkpoint and stream
    python models/nano/evaluate.py OLD_DIR models/nano --loops 64   # also: how often greedy text loops
    python models/nano/evaluate.py models/nano --def-prompts 128 --demo   # user-shaped prompts; the demo judged

Streams: the held-out packages (whole packages never trained on, ``prepare.PACKAGES``) and the held-out
stdlib files. Each is scored on ``--windows`` windows of 512 tokens spread evenly over it (0 = every
non-overlapping window), each window alone. Perplexity is per token of the tokenizer in ``--data``'s
streams (both nanos use the same tokenizer, so per-token numbers compare directly); bits per byte divides
the total NLL by the UTF-8 bytes of the predicted tokens, which holds across tokenizers.

``--loops N`` measures greedy repetition on more than the four demo prompts: N prefixes of 48 tokens at evenly spaced
places in the held-out packages, each continued greedily for 64 tokens. Reported: the share of continuations in
which a non-blank line (indentation stripped) repeats, and the share of continuation tokens that complete a 4-gram
already seen in the prompt or continuation (a within-line loop such as ``n, n, n, n`` shows there, not as a line).

``--def-prompts N`` asks the question the demo asks, on prompts shaped like a user's: N definitions of the held-out
packages cut to their first line (``def f(x):``, ``class C:``) or their first two, each decoded on its own with no
file before it, like ``qwen-mobile demo``'s ``def fibonacci(n):``. A continuation fails as the goal's test fails it
(``tests/models/test_nano_checkpoint.py``): a non-blank line repeats with its indentation, or a piece of text repeats
four times in a row inside a line. The held-out code's own next 64 tokens after the same prompts are scored beside.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from train import (  # run as a script: models/nano/ is on sys.path
    DEMO_PROMPTS,
    greedy_samples,
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


def definition_starts(tok, ids: np.ndarray) -> np.ndarray:
    """Positions in a token stream where a top-level ``def``/``class`` opens a line (after a line break or a document
    separator): the places a user-shaped prompt can be cut from."""
    pieces = [tok.decode([i], skip_special_tokens=False) for i in range(tok.get_vocab_size())]
    opens = np.array([p in ("def", "class") for p in pieces] + [False])  # the extra entry: ids past the vocab
    after_break = np.array([p.endswith("\n") or p == "<|endoftext|>" for p in pieces] + [False])
    ids = np.minimum(ids, len(pieces))
    return np.nonzero(opens[ids[1:]] & after_break[ids[:-1]])[0] + 1


def definition_prompt(tok, ids: np.ndarray, start: int, body_lines: int, new_tokens: int = 64
                      ) -> tuple[str, str] | None:
    """(prompt, the code's own continuation of about new_tokens tokens) for the definition at ``start``: its header
    line, plus its first body line when body_lines is 1 (``def fibonacci(n):\n    if n < 2:\n``). None when the
    header spans lines, the body line is blank, or a document ends first."""
    text = tok.decode(ids[start: start + 24 + new_tokens].tolist(), skip_special_tokens=False)
    lines = text.split("\n")
    take = 1 + body_lines
    if len(lines) <= take or not lines[0].rstrip().endswith(":") or "<|" in "\n".join(lines[:take]):
        return None
    if body_lines and not lines[1].strip():
        return None
    prompt = "\n".join(lines[:take]) + "\n"
    rest = text[len(prompt):].split("<|endoftext|>")[0]
    return prompt, tok.decode(tok.encode(rest).ids[:new_tokens])


def inline_loop_runs(text: str) -> list[re.Match]:
    """Loops inside a line, the goal's second rule: a piece with two or more distinct non-blank characters (`n, `,
    `self.x`) four or more times in a row (group 1 the piece, group 2 its repeats). A piece of one character
    (`----` under a docstring heading, indentation) is layout."""
    return [m for m in re.finditer(r"(.{2,}?)(\1{3,})", text) if len(set(m.group(1)) - set(" \t\n")) >= 2]


def loops_as_the_goal_counts(text: str) -> tuple[bool, bool]:
    """(a non-blank line, indentation kept, occurs twice: the last line may be cut so it is left out; a loop inside
    a line), the goal's two rules as its test applies them."""
    lines = [ln.rstrip() for ln in text.split("\n")[:-1] if ln.strip()]
    return len(lines) != len(set(lines)), bool(inline_loop_runs(text))


@torch.inference_mode()
def definition_loops(model, ids: np.ndarray, prompts: int, new_tokens: int = 64) -> dict:
    """Greedy continuations of `prompts` user-shaped definition prompts spread evenly over a held-out stream, each
    decoded alone, scored by the goal's rules beside the held-out code's own continuations."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model.name_or_path) / "tokenizer.json"))
    starts = definition_starts(tok, ids)
    cut = [definition_prompt(tok, ids, int(s), k % 2, new_tokens) for k, s in enumerate(starts)]
    cut = [c for c in cut if c]
    if not cut:
        raise ValueError("definition prompts: the stream has no top-level def/class with a one-line header")
    picks = [cut[i] for i in np.unique(np.linspace(0, len(cut) - 1, prompts).astype(int))]
    counts = {"greedy": [0, 0, 0], "text": [0, 0, 0]}
    examples = []
    for prompt, truth in picks:
        enc = torch.tensor(tok.encode(prompt).ids)[None]  # [1, P]
        out = model.generate(input_ids=enc, attention_mask=torch.ones_like(enc), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=model.config.eos_token_id)[0, enc.shape[1]:].tolist()
        greedy = tok.decode(out, skip_special_tokens=False)
        for name, cont in (("greedy", greedy), ("text", truth)):
            line, inline = loops_as_the_goal_counts(prompt + cont)
            counts[name] = [counts[name][0] + line, counts[name][1] + inline, counts[name][2] + (line or inline)]
        if len(examples) < 8:
            examples.append(prompt + greedy)
    n = len(picks)
    return dict(prompts=n, candidates=len(cut), new_tokens=new_tokens,
                repeated_line_share=counts["greedy"][0] / n, inline_loop_share=counts["greedy"][1] / n,
                failing_share=counts["greedy"][2] / n, text_repeated_line_share=counts["text"][0] / n,
                text_inline_loop_share=counts["text"][1] / n, text_failing_share=counts["text"][2] / n,
                examples=examples)


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
    ap.add_argument("--def-prompts", type=int, default=0, metavar="N",
                    help="also decode N user-shaped definition prompts (def/class line, or it and one more line)")
    ap.add_argument("--demo", action="store_true",
                    help="also print the greedy continuations of the demo prompts, judged by the goal's rules")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        if args.def_prompts:
            r = definition_loops(model, np.load(args.data / streams["heldout packages"]), args.def_prompts)
            results.append(dict(checkpoint=str(ckpt), stream="definition prompts, heldout packages", **r))
            print(f"{ckpt}  definition prompts: {r['failing_share']:.0%} of {r['prompts']} greedy continuations fail "
                  f"the goal's rules ({r['repeated_line_share']:.0%} repeat a line, {r['inline_loop_share']:.0%} loop "
                  f"inside a line; the held-out code's own: {r['text_failing_share']:.0%})", flush=True)
        if args.demo:
            for smp in greedy_samples(model, AutoTokenizer.from_pretrained(ckpt), DEMO_PROMPTS):
                line, inline = loops_as_the_goal_counts(smp["prompt"] + smp["continuation"])
                verdict = "a line repeats" if line else "loops inside a line" if inline else "passes"
                results.append(dict(checkpoint=str(ckpt), stream="demo prompt", **smp, goal_verdict=verdict))
                print(f"{ckpt}  demo prompt, greedy, {verdict}:\n{smp['prompt']}{smp['continuation']}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
