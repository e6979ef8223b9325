"""Fine-tune a trained nano against its own loops: maximum likelihood plus sequence-level unlikelihood (Welleck et al.,
"Neural Text Generation with Unlikelihood Training", ICLR 2020), on CPU.

    python models/nano/finetune_ul.py --from models/nano --out /tmp/nano_ul --until 03:50

Why: greedy decoding of a small model falls into loops (a line repeated five times); more tokens lower perplexity
but the loops stay (measured mid-run in session 10). Result (README.md, "Tried against the loops"): the one-line loops
went, perplexity rose 12 %, and lines still repeat; not shipped. Unlikelihood training changes what the model prefers in exactly
that case: every step, the model greedily continues a few random training prefixes, every token that completes an
n-gram it already produced in that continuation is marked, and the loss adds -log(1 - p(token)) at those positions,
so the model learns to give its own repeats less probability. The maximum-likelihood term on ordinary batches keeps
its perplexity; both are reported at the end (held-out packages, same windows as train.py) beside the greedy samples.

Nothing here looks at the demo prompts: the continuations start from random windows of the training stream.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import train  # run as a script: models/nano/ is on sys.path

HERE = Path(__file__).resolve().parent


def repeated_ngram_mask(tokens: list[int], start: int, n: int) -> torch.Tensor:
    """[len(tokens)] bool: positions >= start whose token completes an n-gram already seen since `start - n + 1`."""
    mask = torch.zeros(len(tokens), dtype=torch.bool)
    seen: set[tuple[int, ...]] = set()
    for t in range(max(start, n - 1), len(tokens)):
        gram = tuple(tokens[t - n + 1: t + 1])
        if gram in seen:
            mask[t] = True
        seen.add(gram)
    return mask


@torch.no_grad()
def greedy_continue(model, prefix: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """prefix [B, P] -> [B, P + new_tokens], greedy, without a cache (short sequences of a tiny model)."""
    x = prefix
    for _ in range(new_tokens):
        nxt = model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        x = torch.cat([x, nxt], dim=1)
    return x


def unlikelihood_loss(model, seqs: torch.Tensor, prefix_len: int, n: int) -> tuple[torch.Tensor, float]:
    """seqs [B, L]: -mean log(1 - p(x_t | x_<t)) over the continuation's repeated-n-gram positions; the marked share."""
    masks = torch.stack([repeated_ngram_mask(s.tolist(), prefix_len, n) for s in seqs])  # [B, L]
    if not masks.any():
        return torch.zeros(()), 0.0
    logits = model(input_ids=seqs[:, :-1]).logits.float()  # [B, L-1, V]: position t-1 predicts token t
    probs = torch.softmax(logits, dim=-1).gather(-1, seqs[:, 1:, None])[..., 0]  # [B, L-1]
    marked = masks[:, 1:]
    loss = -torch.log((1 - probs[marked]).clamp_min(1e-5)).mean()
    share = marked.sum().item() / (seqs.shape[0] * (seqs.shape[1] - prefix_len))
    return loss, share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, default=HERE, help="trained nano folder (default: this one)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"))
    ap.add_argument("--until", metavar="HH:MM", required=True, help="wall-clock end; evaluation follows")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--ul-weight", type=float, default=1.0)
    ap.add_argument("--ul-sequences", type=int, default=2, help="greedy continuations per step")
    ap.add_argument("--ul-prefix", type=int, default=48)
    ap.add_argument("--ul-new", type=int, default=64)
    ap.add_argument("--ngram", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "heldout.json", "generation_config.json"):
        (args.out / name).write_bytes((args.source / name).read_bytes())
    model = AutoModelForCausalLM.from_pretrained(args.source, dtype=torch.float32)
    train_t = torch.from_numpy(np.load(args.data / "train.npy").astype(np.int64))
    pkg_windows = train.windows_of(np.load(args.data / "heldout_packages.npy"), args.seq_len, train.EVAL_WINDOWS)
    token_bytes = train.token_byte_lengths(args.source / "tokenizer.json", train.CONFIG["vocab_size"])
    tok = AutoTokenizer.from_pretrained(args.source)

    before = train.score(model, pkg_windows, token_bytes)
    samples_before = train.greedy_samples(model, tok, train.DEMO_PROMPTS)
    print(f"before: held-out packages ppl {before['ppl']:.3f}; repeated lines "
          f"{sum(s['repeated_line'] for s in samples_before)}/{len(samples_before)}", flush=True)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    deadline = train.deadline_of(args.until) - 8 * 60  # the evaluation and save take about 8 minutes here
    t0, log, step, est_steps = time.time(), [], 0, None
    hi = len(train_t) - args.seq_len - 1
    while time.time() < deadline:
        # Cosine from lr to lr/10 over the steps the deadline allows (estimated from the pace after 10 steps).
        if step == 10:
            est_steps = max(11, int((deadline - t0) / ((time.time() - t0) / 10)))
        frac = min(1.0, step / est_steps) if est_steps else 0.0
        lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, hi, (args.batch,), generator=gen)
        x = torch.stack([train_t[s: s + args.seq_len] for s in starts.tolist()])  # [B, T]
        model.train()
        mle = model(input_ids=x, labels=x).loss
        prefixes = torch.stack([train_t[s: s + args.ul_prefix]
                                for s in torch.randint(0, hi, (args.ul_sequences,), generator=gen).tolist()])
        model.eval()
        seqs = greedy_continue(model, prefixes, args.ul_new)  # [S, prefix + new]
        model.train()
        ul, share = unlikelihood_loss(model, seqs, args.ul_prefix, args.ngram)
        loss = mle + args.ul_weight * ul
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append(dict(step=step, mle=round(mle.item(), 4), ul=round(float(ul.detach()), 4), repeated_share=round(share, 4),
                        lr=lr, elapsed=round(time.time() - t0, 1)))
        if step % 5 == 0:
            print(f"step {step} mle {mle.item():.4f} ul {float(ul.detach()):.4f} repeated share {share:.3f} lr {lr:.2e} "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        step += 1

    model.eval()
    model.to(torch.bfloat16).save_pretrained(args.out)
    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    after = train.score(shipped, pkg_windows, token_bytes)
    samples = train.greedy_samples(shipped, tok, train.DEMO_PROMPTS)
    print(f"after {step} steps: held-out packages ppl {after['ppl']:.3f} (before {before['ppl']:.3f}); repeated "
          f"lines {sum(s['repeated_line'] for s in samples)}/{len(samples)}", flush=True)
    for smp in samples:
        print(f"sample (repeated line: {smp['repeated_line']}):\n{smp['prompt']}{smp['continuation']}\n", flush=True)
    result = dict(command="python models/nano/finetune_ul.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), steps=step,
        heldout_packages_before=before, heldout_packages=after, samples_before=samples_before, samples=samples,
        log=log)
    tmp = args.out / "finetune_log.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, args.out / "finetune_log.json")


if __name__ == "__main__":
    main()
