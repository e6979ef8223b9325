"""Train the nano Qwen3.5 checkpoint on CPU (not run in CI; 22 minutes on one thread of a shared box).

    python models/nano/prepare.py                      # corpus, tokenizer, heldout.json (seconds)
    nice -n 10 python models/nano/train.py --steps 320 --batch 4 --threads 1  # writes models/nano/

The model is transformers' own ``Qwen3_5ForCausalLM`` (``qwen3_5_text``), the architecture reference,
trained in fp32 and saved in bf16 like the real checkpoints. The run is deterministic for a given
``--steps`` (seeded init and batches, fixed thread count); ``--time-budget`` only stops a run that
overruns, and says so in the log. After training it scores the held-out split with the saved file
reloaded through ``transformers``, greedy-decodes a sample, and writes ``train_log.json`` and
``loss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from prepare import _bytes_to_unicode  # run as a script: models/nano/ is on sys.path

HERE = Path(__file__).resolve().parent

# Sizes are data: the Qwen3.5 0.8B layout scaled down. Head dims are 64 (a multiple of 32, for the
# kernels' fast paths). Attention keeps 0.8B's proportions (q width 2h, kv width h/2, 4 query heads
# per kv head); GDN shares each key head between 2 value heads, like 4B/9B, so a runtime that tiles
# heads instead of repeat_interleave fails on this checkpoint.
CONFIG = dict(
    model_type="qwen3_5_text",
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=8,
    layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"],
    full_attention_interval=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    linear_num_key_heads=4,
    linear_num_value_heads=8,
    linear_key_head_dim=64,
    linear_value_head_dim=64,
    linear_conv_kernel_dim=4,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    attention_bias=False,
    attention_dropout=0.0,
    attn_output_gate=True,
    # partial rotary: 16 of 64 dims rotate (8 frequencies); the interleaved mRoPE sections cover those
    # 8 frequencies as [11, 11, 10] covers 32 in the real models. Text-only, all three rows are equal.
    rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0, partial_rotary_factor=0.25,
                         mrope_section=[3, 3, 2], mrope_interleaved=True),
    max_position_embeddings=2048,  # set explicitly: the class default is the 9B's
    tie_word_embeddings=True,  # set explicitly: the class default is untied (9B)
    initializer_range=0.02,
    use_cache=True,
    bos_token_id=None,
    eos_token_id=8166,  # <|endoftext|>, as config.eos_token_id is in Qwen3.5
    pad_token_id=8166,
)
STOP_IDS = [8168, 8166]  # <|im_end|>, <|endoftext|>
SAMPLE_PROMPT = "def fibonacci(n):\n"


def make_model(config_dict: dict):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    cfg = {k: v for k, v in config_dict.items() if k != "model_type"}
    return Qwen3_5ForCausalLM(Qwen3_5TextConfig(**cfg))


def lr_at(step: int, steps: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup, then cosine from peak to floor * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def score(model, windows: torch.Tensor, token_bytes: np.ndarray, batch: int = 8) -> dict:
    """Sum NLL over windows scored alone (predict w[1:] from w[:-1]); ppl per token and bits per byte.

    Shapes: windows [N, T] int64; token_bytes [vocab] UTF-8 bytes per token id.
    """
    model.eval()
    nll, n_tok, n_bytes = 0.0, 0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = model(input_ids=w[:, :-1]).logits.float()  # [b, T-1, V]
        lp = torch.log_softmax(logits, dim=-1).gather(-1, w[:, 1:, None])[..., 0]
        nll -= lp.double().sum().item()
        n_tok += w[:, 1:].numel()
        n_bytes += int(token_bytes[w[:, 1:].numpy()].sum())
    return dict(nll=nll, tokens=n_tok, bytes=n_bytes, ppl=math.exp(nll / n_tok),
                bits_per_byte=nll / math.log(2) / n_bytes, loss=nll / n_tok)


def token_byte_lengths(tokenizer_path: Path, vocab: int) -> np.ndarray:
    """UTF-8 bytes of each token id; added tokens (document separators) count 0 bytes."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    table = {c: b for b, c in _bytes_to_unicode().items()}
    out = np.zeros(vocab, dtype=np.int64)
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        out[i] = 0 if piece in added else len(bytes(table[c] for c in piece))
    return out


def windows_of(ids: np.ndarray, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows covering the stream; the ragged tail is dropped. Shape [N, seq_len]."""
    n = len(ids) // seq_len
    return torch.from_numpy(ids[: n * seq_len].astype(np.int64).reshape(n, seq_len))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    # One thread: on a shared machine two OpenMP threads wait on each other whenever one is preempted.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=28.0, help="minutes; stop early (and log it) if exceeded")
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--no-save", action="store_true", help="timing runs: train, print tokens/s, write nothing")
    args = ap.parse_args()

    import transformers

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    # torch.use_deterministic_algorithms(True) is left off: on this CPU build it made training steps
    # 10-50x slower. The CPU kernels used here are deterministic for a fixed thread count.
    torch.set_flush_denormal(True)  # decays like exp(-80) would otherwise crawl through denormal arithmetic

    train_ids = np.load(args.data / "train.npy")
    held_ids = np.load(args.data / "heldout.npy")
    model = make_model(CONFIG)
    n_params = sum(p.numel() for p in model.parameters())  # tied table counted once
    print(f"params {n_params:,}; train tokens {len(train_ids):,}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)

    # No weight decay on norms, gates' A_log/dt_bias and conv-free 1-D parameters.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    # Batches: random windows of the train stream, from a seeded generator (same run, same batches).
    gen = torch.Generator().manual_seed(args.seed)
    train_t = torch.from_numpy(train_ids.astype(np.int64))
    hi = len(train_t) - args.seq_len - 1
    log, t0, tokens_seen, stopped_early = [], time.time(), 0, False
    model.train()
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, hi, (args.batch,), generator=gen)
        x = torch.stack([train_t[s: s + args.seq_len] for s in starts.tolist()])  # [B, T]
        loss = model(input_ids=x, labels=x).loss  # transformers shifts labels internally
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
        opt.step()
        tokens_seen += x.numel()
        elapsed = time.time() - t0
        log.append(dict(step=step, loss=round(loss.item(), 4), lr=lr, grad_norm=round(gnorm, 3),
                        elapsed=round(elapsed, 1)))
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} lr {lr:.2e} gnorm {gnorm:.2f} "
                  f"{tokens_seen / elapsed:.0f} tok/s {elapsed / 60:.1f} min", flush=True)
        if elapsed > args.time_budget * 60 and step < args.steps - 1:
            print(f"time budget exceeded at step {step}; stopping early", flush=True)
            stopped_early = True
            break
    train_seconds = time.time() - t0
    print(f"trained {len(log)} steps, {tokens_seen:,} tokens in {train_seconds / 60:.1f} min "
          f"({tokens_seen / train_seconds:.0f} tok/s)", flush=True)
    if args.no_save:
        return

    # Held-out score of the fp32 weights as trained, then of the shipped bf16 file reloaded from disk.
    token_bytes = token_byte_lengths(args.out / "tokenizer.json", CONFIG["vocab_size"])
    held_windows = windows_of(held_ids, args.seq_len)
    fp32_full = score(model, held_windows, token_bytes)
    print(f"held-out (fp32 as trained): ppl {fp32_full['ppl']:.3f} bpb {fp32_full['bits_per_byte']:.4f}", flush=True)

    model.to(torch.bfloat16).save_pretrained(args.out)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    GenerationConfig(bos_token_id=None, eos_token_id=STOP_IDS, pad_token_id=CONFIG["pad_token_id"],
                     do_sample=False).save_pretrained(args.out)
    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    full = score(shipped, held_windows, token_bytes)
    heldout = json.loads((args.out / "heldout.json").read_text())
    sample = score(shipped, torch.tensor(heldout["windows"]), token_bytes)
    print(f"held-out (bf16 file, fp32 compute): ppl {full['ppl']:.3f} bpb {full['bits_per_byte']:.4f}; "
          f"fixed sample ppl {sample['ppl']:.3f} bpb {sample['bits_per_byte']:.4f}", flush=True)

    tok = AutoTokenizer.from_pretrained(args.out)
    prompt = tok(SAMPLE_PROMPT, return_tensors="pt")
    gen_ids = shipped.generate(**prompt, max_new_tokens=96, do_sample=False)
    text = tok.decode(gen_ids[0], skip_special_tokens=False)
    print("sample:\n" + text, flush=True)

    result = dict(
        command=f"nice -n 10 python models/nano/train.py --steps {args.steps} --batch {args.batch} --threads {args.threads}",
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
        params=n_params, steps_done=len(log), stopped_early=stopped_early, tokens_seen=tokens_seen,
        train_seconds=round(train_seconds, 1), tokens_per_second=round(tokens_seen / train_seconds, 1),
        heldout_full_fp32=fp32_full, heldout_full=full, heldout_sample=sample,
        sample_prompt=SAMPLE_PROMPT, sample_greedy=text,
        log=log,
    )
    (args.out / "train_log.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_loss(log, args.out / "loss.png", full["loss"])


def plot_loss(log: list[dict], path: Path, heldout_loss: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    k = 10  # moving average over 10 steps
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="train (per step)")
    ax.plot(steps[k - 1:], smooth, lw=1.2, label="train (10-step mean)")
    ax.axhline(heldout_loss, color="k", ls="--", lw=0.8, label=f"held-out {heldout_loss:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(min(loss.min(), heldout_loss) - 0.2, min(loss.max(), 9.5))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
