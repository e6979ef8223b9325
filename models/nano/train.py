"""Train the nano Qwen3.5 checkpoint on CPU (not run in CI; about 100 minutes on one thread).

    python models/nano/prepare.py                                   # corpus, tokenizer, heldout.json (~1 min)
    python models/nano/train.py --steps 1400 --batch 4 --threads 1 --until 00:25   # writes models/nano/
    python models/nano/train.py ... --resume                        # continue an interrupted run

The model is transformers' own ``Qwen3_5ForCausalLM`` (``qwen3_5_text``), the architecture reference,
trained in fp32 and saved in bf16 like the real checkpoints. The run is deterministic for a given
``--steps`` (seeded init and batches, fixed thread count). Every ``--checkpoint-minutes`` it writes
the full training state (weights, optimiser, batch generator, log) to ``--state`` and scores the fixed
held-out sample, so ``--resume`` continues an interrupted run exactly. ``--until HH:MM`` is a
wall-clock deadline: when the measured step time says the planned steps would overrun it, the run
shortens its plan (the cosine then ends at the new last step) and says so in the log, so it always
ends with a decayed learning rate, an evaluation, the checkpoint and the plot. After training it
scores the held-out packages and stdlib files with the saved file reloaded through ``transformers``,
greedy-decodes the demo prompts, and writes ``train_log.json`` and ``loss.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from prepare import _token_bytes  # run as a script: models/nano/ is on sys.path

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
# Greedy 64-token samples are logged for these: the README/CLI default prompt and the demo's prompt
# (export/cli.py cmd_demo), plus two shapes the first nano looped on.
DEMO_PROMPTS = ["def fibonacci(n):\n", "def fibonacci(n):\n    if n < 2:\n",
                "class Stack:\n    def __init__(self):\n", "import os\n\n\ndef read_config(path):\n"]
EVAL_WINDOWS = 64  # windows (of --seq-len tokens) spread over each held-out stream for the final scores


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

    out = np.zeros(vocab, dtype=np.int64)
    for i, raw in _token_bytes(Tokenizer.from_file(str(tokenizer_path))).items():
        out[i] = len(raw)
    return out


def windows_of(ids: np.ndarray, seq_len: int, n: int | None = None) -> torch.Tensor:
    """n windows spread evenly over the stream (first at 0, last at the end), or, with n=None,
    non-overlapping windows covering it (ragged tail dropped). Shape [N, seq_len]."""
    if n is None:
        count = len(ids) // seq_len
        return torch.from_numpy(ids[: count * seq_len].astype(np.int64).reshape(count, seq_len))
    stride = (len(ids) - seq_len) // (n - 1)
    return torch.from_numpy(np.stack([ids[i * stride: i * stride + seq_len] for i in range(n)]).astype(np.int64))


def deadline_of(hhmm: str) -> float:
    """The next wall-clock time HH:MM (today, or tomorrow if already past) as a Unix time."""
    try:
        h, m = (int(x) for x in hhmm.split(":"))
        now = dt.datetime.now()
        at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    except ValueError:
        raise SystemExit(f"train.py: --until {hhmm!r} is not a time HH:MM")
    if at <= now:
        at += dt.timedelta(days=1)
    return at.timestamp()


def require_bf16_hardware(script: str) -> None:
    """--bf16 pays only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it.

    Measured on an AVX2-only AMD EPYC (session 15): one batch-4 x 512 step of this model took 51 s with bf16
    autocast and 4.8 s in fp32, so a run started with --bf16 there would be ten times slower, not faster.
    """
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        raise SystemExit(f"{script}: --bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has neither "
                         "AVX512-BF16 nor AMX, so bf16 autocast is emulated (about 10x slower than fp32 here); "
                         "run without --bf16")


def save_state(path: Path, **state) -> None:
    """Training state for --resume, written under a temporary name and renamed (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def repetition_drop_mask(x: torch.Tensor, n: int, layers: int, rate: float,
                         gen: torch.Generator) -> torch.Tensor:
    """[layers, B, T] bool, True where a layer hides a token from its mixer (Li et al.'s repetition dropout).

    A token can be hidden when it lies in an n-gram that occurs at least twice in its row. Each such n-gram
    is hidden in each layer independently with probability ``rate``, at all of its occurrences (the first
    included), as in the paper: the model then cannot learn to predict by copying what repeats.
    """
    batch, seq = x.shape
    base = int(x.max()) + 1
    if base ** n >= 2 ** 62:
        raise ValueError(f"repetition_drop_mask: {n}-grams of a {base}-token vocabulary overflow int64 codes")
    spans = seq - n + 1
    codes = x[:, :spans].clone()  # [B, T-n+1]: one integer per n-gram, keyed by its first position
    for k in range(1, n):
        codes = codes * base + x[:, k:k + spans]
    hidden = torch.zeros(layers, batch, seq, dtype=torch.bool)
    for row in range(batch):
        _, which, counts = torch.unique(codes[row], return_inverse=True, return_counts=True)
        gate = (torch.rand(layers, len(counts), generator=gen) < rate) & (counts >= 2)  # [L, distinct n-grams]
        at_start = gate[:, which]  # [L, T-n+1]
        for k in range(n):
            hidden[:, row, k:k + spans] |= at_start
    return hidden


class RepetitionDropout:
    """Applies a ``repetition_drop_mask`` to a transformers Qwen3.5 model through forward hooks.

    Attention layers: the hidden tokens' keys are masked for every later query (a token still sees itself,
    so no softmax row is empty). Gated delta layers: a hidden token's step leaves the recurrent state as it
    was, beta = 0 (nothing written) and decay exp(g) = 1 (its content does not choose how much is forgotten),
    so later tokens cannot read it, which is what masking its key does in attention. The short causal conv
    still passes a token to its next three neighbours, as the residual stream passes it to itself; the loops
    this targets copy from lines back, through the state or the keys. ``hidden`` is set per batch and must be
    None outside training steps (then the hooks do nothing).
    """

    def __init__(self, model, n: int, rate: float, seed: int):
        if model.config._attn_implementation != "sdpa":
            raise ValueError(f"RepetitionDropout: needs the sdpa attention (boolean masks), "
                             f"not {model.config._attn_implementation!r}")
        self.n, self.rate = n, rate
        self.gen = torch.Generator().manual_seed(seed)
        self.hidden: torch.Tensor | None = None  # [L, B, T] bool
        self.layers = len(model.model.layers)
        for i, layer in enumerate(model.model.layers):
            if model.config.layer_types[i] == "full_attention":
                layer.self_attn.register_forward_pre_hook(self._attention_hook(i), with_kwargs=True)
            else:
                # beta = sigmoid(b) -> 0 and g = -exp(A_log) * softplus(a + dt_bias) -> 0 at hidden tokens
                layer.linear_attn.in_proj_b.register_forward_hook(self._gate_hook(i))
                layer.linear_attn.in_proj_a.register_forward_hook(self._gate_hook(i))

    def draw(self, x: torch.Tensor) -> None:
        self.hidden = repetition_drop_mask(x, self.n, self.layers, self.rate, self.gen)

    def _attention_hook(self, i: int):
        def hook(module, args, kwargs):
            if self.hidden is None:
                return None
            seq = self.hidden.shape[-1]
            causal = torch.ones(seq, seq, dtype=torch.bool).tril()  # [T, T]
            visible = ~self.hidden[i][:, None, None, :] | torch.eye(seq, dtype=torch.bool)  # [B, 1, T, T]
            kwargs["attention_mask"] = causal & visible
            return args, kwargs
        return hook

    def _gate_hook(self, i: int):
        def hook(module, args, output):  # output: the b or a logits, [B, T, value heads]
            if self.hidden is None:
                return None
            return output.masked_fill(self.hidden[i][..., None], -1e4)
        return hook


def repeats_a_line(text: str) -> bool:
    """Whether a non-blank line, indentation stripped, occurs twice; the last line may be cut, so it is left out."""
    lines = [ln.strip() for ln in text.split("\n")[:-1] if ln.strip()]
    return len(lines) != len(set(lines))


def greedy_samples(model, tok, prompts: list[str], new_tokens: int = 64) -> list[dict]:
    """Greedy continuations and whether any non-blank line repeats (the first nano's failure)."""
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        gen = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        text = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)
        out.append(dict(prompt=prompt, continuation=text, repeated_line=repeats_a_line(prompt + text)))
    return out


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
    ap.add_argument("--until", metavar="HH:MM", default=None,
                    help="wall-clock deadline for training; the plan shrinks to end before it (logged)")
    ap.add_argument("--eval-reserve", type=float, default=6.0,
                    help="minutes kept before --until for the final evaluation, save and plot")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0, help="how often to write --state")
    ap.add_argument("--state", type=Path, default=Path("/tmp/nano_data/train_state.pt"),
                    help="training state for --resume (not committed)")
    ap.add_argument("--resume", action="store_true", help="continue from --state")
    ap.add_argument("--data", type=Path, default=Path("/tmp/nano_data"))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast for the forward (AMX/AVX512-BF16 matmuls; weights, grads and AdamW stay fp32)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the training forward (about 2.5 min to compile, once per start or resume)")
    ap.add_argument("--no-save", action="store_true", help="timing runs: train, print tokens/s, write nothing")
    ap.add_argument("--rep-dropout", type=float, default=0.0, metavar="P",
                    help="repetition dropout (Li et al. 2023): each layer hides each n-gram that repeats in a "
                         "training row from its mixer with probability P (0: off; the paper used 0.6)")
    ap.add_argument("--rep-ngram", type=int, default=2, help="n of --rep-dropout's repeated n-grams (the paper: 2)")
    args = ap.parse_args()

    import transformers

    if args.bf16:
        require_bf16_hardware("train.py")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    # torch.use_deterministic_algorithms(True) is left off: on this CPU build it made training steps
    # 10-50x slower. The CPU kernels used here are deterministic for a fixed thread count.
    torch.set_flush_denormal(True)  # decays like exp(-80) would otherwise crawl through denormal arithmetic

    train_ids = np.load(args.data / "train.npy")
    held_ids = np.load(args.data / "heldout.npy")  # held-out stdlib files
    pkg_ids = np.load(args.data / "heldout_packages.npy")  # held-out packages
    model = make_model(CONFIG)
    rep_dropout = RepetitionDropout(model, args.rep_ngram, args.rep_dropout, args.seed) if args.rep_dropout else None
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
    heldout = json.loads((args.out / "heldout.json").read_text())
    sample_windows = torch.tensor(heldout["windows"])  # [8, seq_len], the fixed held-out sample
    token_bytes = token_byte_lengths(args.out / "tokenizer.json", CONFIG["vocab_size"])
    log, evals, tokens_seen, stopped_early, replans, start_step, prior_seconds = [], [], 0, False, [], 0, 0.0
    steps = args.steps
    if args.resume:
        if not args.state.exists():
            raise SystemExit(f"train.py: --resume: no training state at {args.state}")
        st = torch.load(args.state, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        if rep_dropout:
            if st.get("rep_gen") is None:
                raise SystemExit(f"train.py: --resume --rep-dropout: the state at {args.state} was saved by a run "
                                 "without --rep-dropout")
            rep_dropout.gen.set_state(st["rep_gen"])
        torch.set_rng_state(st["torch_rng"])
        log, evals, tokens_seen, replans = st["log"], st["evals"], st["tokens_seen"], st["replans"]
        start_step, prior_seconds = st["step"], st["train_seconds"]
        steps = args.steps if args.until else st["steps"]  # with a deadline, the plan is fitted again
        print(f"resumed at step {start_step} of {steps} ({prior_seconds / 60:.1f} min trained)", flush=True)
    deadline = deadline_of(args.until) - args.eval_reserve * 60 if args.until else None
    t0 = time.time() - prior_seconds  # elapsed counts training time only, across resumes
    last_ckpt = time.time()
    # Measured on this machine (1 thread, batch 4 x 512, 8 steps after warmup): eager fp32 932 tok/s,
    # --bf16 1278, --compile 1132, both 1808. The loss after 10 steps agrees to 3 decimals.
    forward = torch.compile(model) if args.compile else model
    tok = None  # loaded at the first checkpoint, for its greedy samples
    model.train()
    step = start_step
    while step < steps:
        lr = lr_at(step, steps, args.lr, args.warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, hi, (args.batch,), generator=gen)
        x = torch.stack([train_t[s: s + args.seq_len] for s in starts.tolist()])  # [B, T]
        if rep_dropout:
            rep_dropout.draw(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = forward(input_ids=x, labels=x).loss  # transformers shifts labels internally
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if rep_dropout:
            rep_dropout.hidden = None  # the checkpoint's scores and greedy samples see every token
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip).item()
        opt.step()
        tokens_seen += x.numel()
        elapsed = time.time() - t0
        log.append(dict(step=step, loss=round(loss.item(), 4), lr=lr, grad_norm=round(gnorm, 3),
                        elapsed=round(elapsed, 1)))
        step += 1
        if step % 10 == 0 or step == steps:
            print(f"step {step - 1:5d}/{steps} loss {loss.item():.4f} lr {lr:.2e} gnorm {gnorm:.2f} "
                  f"{tokens_seen / elapsed:.0f} tok/s {elapsed / 60:.1f} min", flush=True)
        # Deadline: from the last 200 steps' pace, fit the plan (at most --steps) so the cosine ends
        # before it. A slow patch shrinks the plan and a fast one gives the steps back; in the last
        # 15 % of the plan only shrinking is allowed, so the decay is not stretched at the end.
        if deadline and step % 50 == 0 and len(log) > 200:
            pace = (log[-1]["elapsed"] - log[-201]["elapsed"]) / 200  # seconds per step
            fits = max(step + 1, min(args.steps, step + int((deadline - time.time()) / pace)))
            late = step > 0.85 * steps
            if fits < steps or (fits > steps + 20 and not late):
                replans.append(dict(at_step=step, steps_before=steps, steps_after=fits,
                                    seconds_per_step=round(pace, 2)))
                print(f"--until {args.until}: at {pace:.2f} s/step the plan changes from {steps} to {fits} steps",
                      flush=True)
                steps = fits
        stopped_early = steps < args.steps
        if time.time() - last_ckpt > args.checkpoint_minutes * 60 and step < steps:
            sample = score(model, sample_windows, token_bytes)
            if tok is None:
                from transformers import AutoTokenizer
                tok = AutoTokenizer.from_pretrained(args.out)
            # Whether greedy text still loops, as training goes (the demo goal), beside the perplexity.
            looping = [smp["repeated_line"] for smp in greedy_samples(model, tok, DEMO_PROMPTS)]
            model.train()
            evals.append(dict(step=step, tokens_seen=tokens_seen, ppl=sample["ppl"], bits_per_byte=sample["bits_per_byte"],
                              loss=sample["loss"], repeated_line=looping))
            save_state(args.state, model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                       rep_gen=rep_dropout.gen.get_state() if rep_dropout else None,
                       torch_rng=torch.get_rng_state(), log=log, evals=evals, tokens_seen=tokens_seen,
                       replans=replans, step=step, steps=steps, train_seconds=time.time() - t0)
            print(f"checkpoint at step {step}: held-out sample ppl {sample['ppl']:.2f} "
                  f"bpb {sample['bits_per_byte']:.4f}; demo prompts repeating a line: {sum(looping)}/{len(looping)}",
                  flush=True)
            last_ckpt = time.time()
    train_seconds = time.time() - t0
    print(f"trained {len(log)} steps, {tokens_seen:,} tokens in {train_seconds / 60:.1f} min "
          f"({tokens_seen / train_seconds:.0f} tok/s)", flush=True)
    if args.no_save:
        return

    # Held-out scores of the fp32 weights as trained, then of the shipped bf16 file reloaded from disk:
    # EVAL_WINDOWS windows spread over the held-out packages and over the held-out stdlib files.
    pkg_windows = windows_of(pkg_ids, args.seq_len, EVAL_WINDOWS)
    held_windows = windows_of(held_ids, args.seq_len, EVAL_WINDOWS)
    fp32_full = score(model, pkg_windows, token_bytes)
    print(f"held-out packages (fp32 as trained): ppl {fp32_full['ppl']:.3f} bpb {fp32_full['bits_per_byte']:.4f}", flush=True)

    model.to(torch.bfloat16).save_pretrained(args.out)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    GenerationConfig(bos_token_id=None, eos_token_id=STOP_IDS, pad_token_id=CONFIG["pad_token_id"],
                     do_sample=False).save_pretrained(args.out)
    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    full = score(shipped, pkg_windows, token_bytes)
    stdlib_full = score(shipped, held_windows, token_bytes)
    sample = score(shipped, sample_windows, token_bytes)
    print(f"held-out packages (bf16 file, fp32 compute): ppl {full['ppl']:.3f} bpb {full['bits_per_byte']:.4f}; "
          f"held-out stdlib ppl {stdlib_full['ppl']:.3f} bpb {stdlib_full['bits_per_byte']:.4f}; "
          f"fixed sample ppl {sample['ppl']:.3f} bpb {sample['bits_per_byte']:.4f}", flush=True)

    tok = AutoTokenizer.from_pretrained(args.out)
    samples = greedy_samples(shipped, tok, DEMO_PROMPTS)
    for smp in samples:
        print(f"sample (repeated line: {smp['repeated_line']}):\n{smp['prompt']}{smp['continuation']}\n", flush=True)

    result = dict(
        command=(f"python models/nano/train.py --steps {args.steps} --batch {args.batch} --threads {args.threads}"
                 + (" --bf16" if args.bf16 else "") + (" --compile" if args.compile else "")
                 + (f" --rep-dropout {args.rep_dropout} --rep-ngram {args.rep_ngram}" if args.rep_dropout else "")
                 + (f" --until {args.until}" if args.until else "")),
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
        params=n_params, steps_planned=args.steps, steps_done=len(log), replans=replans,
        stopped_early=stopped_early, tokens_seen=tokens_seen,
        train_seconds=round(train_seconds, 1), tokens_per_second=round(tokens_seen / train_seconds, 1),
        eval_windows=EVAL_WINDOWS,
        heldout_packages_fp32=fp32_full, heldout_packages=full, heldout_stdlib=stdlib_full, heldout_sample=sample,
        samples=samples, evals=evals,
        log=log,
    )
    tmp = args.out / "train_log.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out / "train_log.json")
    plot_loss(log, args.out / "loss.png", full["loss"], evals)


def plot_loss(log: list[dict], path: Path, heldout_loss: float, evals: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    k = 20  # moving average over 20 steps
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="train (per step)")
    ax.plot(steps[k - 1:], smooth, lw=1.2, label="train (20-step mean)")
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", ms=2.5, lw=0.8,
                label="held-out packages, fixed sample")
    ax.axhline(heldout_loss, color="k", ls="--", lw=0.8, label=f"held-out packages, final {heldout_loss:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(min(loss.min(), heldout_loss) - 0.2, min(loss.max(), 9.5))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
