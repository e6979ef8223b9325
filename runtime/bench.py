"""`qwen-mobile bench`: time a bundle on this host and write results in the bench schema (schemas/bench.schema.json).

Method, per prompt length: `warmup` untimed runs, then `runs` timed ones. A run starts a fresh sequence (prefill at
position 0 resets the state in-graph), feeds the prompt through `forward`, samples greedily and decodes exactly
`generate_tokens` tokens through `decode_token`, ignoring stop ids so every run does the same work. TTFT is prompt in ->
first token out; prefill tok/s is prompt tokens / prefill time; decode tok/s is decode steps / decode time. Prompts
are random token ids from a seeded generator (the tokenizer is not involved), so bundles of the same model see the
same prompts.

The same schema is written by the native runner and both sample apps, so `--plot` can put a phone's JSON next to a
host run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
from pathlib import Path

import torch

from .bundle import BundleError, package_version, validate_against

SCHEMA_PATH = Path(__file__).parent / "schemas" / "bench.schema.json"
FORMAT = "qwen-mobile-bench"


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "p10": percentile(values, 10), "p90": percentile(values, 90),
            "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def device_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        ram = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"model": f"{platform.machine()} host", "os": platform.platform(), "arch": platform.machine(),
            "cpu": cpu, "cores": os.cpu_count(), "ram_bytes": ram, "emulated": False}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def random_prompt(vocab_size: int, length: int, seed: int, avoid: set[int]) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (length,), generator=gen).tolist()
    return [t if t not in avoid else (t + 1) % vocab_size for t in ids]


def bench_bundle_in_subprocess(folder: str | Path, prompt_lengths, generate_tokens: int, runs: int, warmup: int,
                               seed: int) -> dict:
    """One bundle in a fresh Python process, so its peak RSS is its own and not the previous bundle's."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "qwen_mobile.runtime.bench", str(folder), "--out", str(out),
               "--prompt-lengths", ",".join(map(str, prompt_lengths)), "--gen", str(generate_tokens),
               "--runs", str(runs), "--warmup", str(warmup), "--seed", str(seed)]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            raise ValueError(errors[-1][len("error: "):] if errors else
                             f"bench of {folder} failed:\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def run_bench(bundle, prompt_lengths=(128, 512), generate_tokens: int = 64, runs: int = 5, warmup: int = 1,
              seed: int = 0, progress=None, baseline_rss: int | None = None) -> dict:
    """Benchmark one loaded `Bundle`; returns a dict that validates against the bench schema."""
    from qwen_mobile.runtime.sampling import Sampler, SamplingConfig

    if runs < 1 or warmup < 0 or generate_tokens < 0:
        raise ValueError("--runs must be >= 1, --warmup >= 0, --gen >= 0")
    for length in prompt_lengths:
        if length < 1 or length + generate_tokens > bundle.max_seq_len:
            raise ValueError(f"--prompt-lengths {length} + --gen {generate_tokens} does not fit the bundle's context "
                             f"of {bundle.max_seq_len} tokens")
    results = []
    for length in prompt_lengths:
        prompt = random_prompt(bundle.vocab_size, length, seed + length, bundle.stop_ids)
        samples = []
        for i in range(warmup + runs):
            session = bundle.session()
            out = session.generate(prompt, generate_tokens, Sampler(SamplingConfig()), stop_ids=set())
            if progress:
                progress(length, i, warmup + runs)
            if i < warmup:
                continue
            samples.append({"ttft_ms": out.ttft_s * 1e3, "prefill_tok_s": out.prefill_tok_s,
                            "decode_tok_s": out.decode_tok_s, "generated_tokens": len(out.ids),
                            "decode_ms_per_token": [round(s * 1e3, 4) for s in out.step_s]})
        decode = [s["decode_tok_s"] for s in samples if s["decode_tok_s"] is not None]
        results.append({"prompt_tokens": length, "generate_tokens": generate_tokens,
                        "ttft_ms": stats([s["ttft_ms"] for s in samples]),
                        "prefill_tok_s": stats([s["prefill_tok_s"] for s in samples]),
                        "decode_tok_s": stats(decode) if decode else None, "samples": samples})
    m = bundle.manifest
    recipe = m["recipe"]
    images = bench_images(bundle, runs, warmup, seed) if bundle.vision else None
    return {
        "schema_version": 1,
        "format": FORMAT,
        "producer": {"name": "qwen-mobile-host", "version": package_version(),
                     "runtime": f"executorch {package_version('executorch', 'unknown')} pybindings, "
                                f"torch {torch.__version__}"},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(),
        "bundle": {"hash": bundle.hash, "path": str(bundle.folder), "model_id": m["model"]["id"],
                   "model_size": m["model"].get("size"), "params": m["model"]["params"],
                   "backend": recipe.get("backend", recipe["name"]), "recipe": recipe["name"],
                   "qlinear": recipe["qlinear"], "qembedding": recipe["qembedding"],
                   "group_size": recipe.get("group_size"), "bytes": sum(f["bytes"] for f in m["files"].values())},
        "settings": {"prompt_lengths": list(prompt_lengths), "generate_tokens": generate_tokens, "runs": runs,
                     "warmup": warmup, "threads": torch.get_num_threads(),
                     "prefill_chunk": bundle.max_prefill_tokens,
                     "prompt_source": f"random token ids, seed {seed} + prompt length"},
        "results": results,
        **({"images": images} if images else {}),
        "memory": {"peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline_rss,
                   "load_ms": bundle.load_seconds * 1e3},
        "energy": None,
        "notes": ["host run: not a phone measurement",
                  "peak RSS is the whole Python process (interpreter, torch, ExecuTorch); baseline_rss_bytes is its "
                  "RSS before the bundle was loaded"],
    }


IMAGE_PROMPT_TEXT_TOKENS = 16  # text after the image: a short question


def image_bench_prompt(bundle, entry: dict, seed: int):
    """One `vision.images` entry -> (the test card at that size as the bundle's input, [image span + 16 random text
    tokens]): the image prompt every runner's image rows time (qwen-bench builds the same)."""
    from .images import bundle_image, image_span, synthetic_image

    vision = bundle.vision
    size = (entry["height"], entry["width"])
    image = bundle_image(synthetic_image(*size), vision, source="synthetic test card", size=size)
    avoid = bundle.stop_ids | {vision["image_token_id"], vision["vision_start_token_id"], vision["vision_end_token_id"]}
    return image, image_span(vision) + random_prompt(bundle.vocab_size, IMAGE_PROMPT_TEXT_TOKENS, seed, avoid)


def bench_images(bundle, runs: int, warmup: int, seed: int) -> list[dict]:
    """Per image size of the bundle: encode time and time to first token of [image span + 16 random text tokens]."""
    from .sampling import Sampler, SamplingConfig

    out = []
    for entry in bundle.vision["images"]:
        size = (entry["height"], entry["width"])
        image, prompt = image_bench_prompt(bundle, entry, seed)
        encode, ttft, prompt_tokens = [], [], 0
        for i in range(warmup + runs):
            result = bundle.session().generate(prompt, 1, Sampler(SamplingConfig()), stop_ids=set(), images=[image])
            if i >= warmup:
                encode.append(result.image_encode_s * 1e3)
                ttft.append(result.ttft_s * 1e3)
                prompt_tokens = len(result.prompt_ids)
        out.append({"height": size[0], "width": size[1], "method": entry["method"], "tokens": entry["tokens"],
                    "prompt_tokens": prompt_tokens, "encode_ms": stats(encode), "ttft_ms": stats(ttft)})
    return out


def validate_bench(result: dict, source: str = "bench result") -> None:
    validate_against(SCHEMA_PATH, result, source)


def load_results(path: str | Path) -> list[dict]:
    """Bench results from a JSON file holding one result or a list of them; each is validated."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        validate_bench(item, f"{path}[{i}]" if isinstance(data, list) else str(path))
    return items


def load_result_folder(folder: str | Path) -> tuple[list[dict], list[Path]]:
    """Every bench result under `folder` (a device farm's artifacts: one subfolder per device, logs beside them).

    JSON files that say they are bench results (`"format": "qwen-mobile-bench"`) are validated, and a bad one is an
    error naming it; other JSON files (a runner's launch.json, farm metadata) are returned as skipped.
    """
    folder = Path(folder)
    results, skipped = [], []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            skipped.append(path)
            continue
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(i, dict) and i.get("format") == FORMAT for i in items) or not items:
            skipped.append(path)
            continue
        results += load_results(path)
    if not results:
        raise BundleError(f"{folder}: no bench results (JSON files with \"format\": \"{FORMAT}\") in it or its "
                          f"subfolders; {len(skipped)} other JSON files")
    return results, skipped


def _energy_text(res: dict) -> str:
    energy = res.get("energy") or {}
    per_token = energy.get("joules_per_token")
    if per_token is None:
        return "-"
    if energy.get("valid") is False or energy.get("invalid_reasons"):
        return f"({per_token:.3g}, invalid: charging/plugged)"
    return f"{per_token:.3g}"


def _format_table(head: tuple, rows: list[tuple]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _save_figure(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _by_device(results: list[dict]) -> list[dict]:
    return sorted(results, key=lambda r: (r["device"]["model"], r["bundle"]["model_id"], r["bundle"]["qlinear"]))


def device_table(results: list[dict]) -> str:
    """One row per device and bundle (results from many phones, e.g. a device farm run), sorted by device."""
    lengths = sorted({r["prompt_tokens"] for res in results for r in res["results"]})
    head = ("device", "bundle", "producer", *(f"pp{n} tok/s" for n in lengths), f"TTFT@{lengths[0]} ms",
            "decode tok/s (p10-p90)", "J/token", "peak RSS")
    rows = []
    for res in _by_device(results):
        dev, b = res["device"], res["bundle"]
        by_len = {r["prompt_tokens"]: r for r in res["results"]}
        decode = [r["decode_tok_s"] for r in res["results"] if r["decode_tok_s"]]
        d = decode[0] if decode else None
        first = by_len.get(lengths[0])
        rss = (res.get("memory") or {}).get("peak_rss_bytes")
        rows.append((f"{dev['model']} ({dev['os']}{', emulated' if dev.get('emulated') else ''})",
                     f"{b['model_id']} {b['qlinear']}/{b['qembedding']}", res["producer"]["name"],
                     *(f"{by_len[n]['prefill_tok_s']['median']:.1f}" if n in by_len else "-" for n in lengths),
                     f"{first['ttft_ms']['median']:.1f}" if first else "-",
                     f"{d['median']:.1f} ({d['p10']:.1f}-{d['p90']:.1f})" if d else "-",
                     _energy_text(res), f"{rss / 1e9:.2f} GB" if rss else "-"))
    return _format_table(head, rows)


def device_plot(results: list[dict], out: str | Path) -> Path:
    """Horizontal bars, one per device and bundle: decode tok/s and prefill tok/s at the first prompt length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = _by_device(results)
    names = [f"{r['device']['model']} | {r['bundle']['model_id']} {r['bundle']['qlinear']}" for r in ordered]
    first_len = min(x["prompt_tokens"] for r in ordered for x in r["results"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(ordered) + 1.6), sharey=True)
    for ax, key, title in ((axes[0], "decode_tok_s", "decode tok/s"),
                           (axes[1], "prefill_tok_s", f"prefill tok/s (prompt {first_len})")):
        med, lo, hi = [], [], []
        for r in ordered:
            pick = [x[key] for x in r["results"]
                    if x[key] and (key == "decode_tok_s" or x["prompt_tokens"] == first_len)]
            s = pick[0] if pick else {"median": 0.0, "p10": 0.0, "p90": 0.0}
            med.append(s["median"])
            lo.append(s["median"] - s["p10"])
            hi.append(s["p90"] - s["median"])
        ax.barh(range(len(ordered)), med, xerr=[lo, hi], capsize=3, color="tab:blue" if key == "decode_tok_s" else
                "tab:orange")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(ordered)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("qwen-mobile bench across devices: median with p10-p90")
    return _save_figure(fig, out)


def label(result: dict) -> str:
    b = result["bundle"]
    where = result["device"]["model"]
    return f"{b['model_id']} {b['qlinear']}/{b['qembedding']}\n{where}"


def table(results: list[dict]) -> str:
    """The on-screen summary: one row per bundle and prompt length, ratios against the first bundle."""
    head = ("bundle", "device", "prompt", "TTFT ms", "prefill tok/s", "decode tok/s (p10-p90)", "vs first",
            "peak RSS")
    rows = []
    base = {r["prompt_tokens"]: r for r in results[0]["results"]}
    for res in results:
        b = res["bundle"]
        for r in res["results"]:
            d = r["decode_tok_s"]
            ref = base.get(r["prompt_tokens"])
            ratio = ""
            if ref is not None and res is not results[0]:
                ratio = f"pp x{r['prefill_tok_s']['median'] / ref['prefill_tok_s']['median']:.2f}"
                if d and ref["decode_tok_s"]:
                    ratio += f", tg x{d['median'] / ref['decode_tok_s']['median']:.2f}"
            rss = (res.get("memory") or {}).get("peak_rss_bytes")
            rows.append((f"{b['model_id']} {b['qlinear']}/{b['qembedding']} ({(b.get('bytes') or 0) / 1e6:.1f} MB)",
                         res["device"]["model"], str(r["prompt_tokens"]), f"{r['ttft_ms']['median']:.1f}",
                         f"{r['prefill_tok_s']['median']:.1f}",
                         f"{d['median']:.1f} ({d['p10']:.1f}-{d['p90']:.1f})" if d else "-", ratio,
                         f"{rss / 1e9:.2f} GB" if rss else "-"))
    text = _format_table(head, rows)
    image_rows = [(f"{res['bundle']['model_id']} {res['bundle']['qlinear']}/{res['bundle']['qembedding']}",
                   f"{im['height']}x{im['width']}", str(im["tokens"]), str(im["prompt_tokens"]),
                   f"{im['encode_ms']['median']:.1f}", f"{im['ttft_ms']['median']:.1f}")
                  for res in results for im in res.get("images") or []]
    if image_rows:
        text += "\n\n" + _format_table(("bundle", "image HxW", "image tokens", "prompt tokens", "encode ms",
                                         "TTFT ms (whole prompt)"), image_rows)
    return text


def plot(results: list[dict], out: str | Path) -> Path:
    """Bars per bundle: prefill tok/s at each prompt length and decode tok/s, p10-p90 whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["prompt_tokens"] for res in results for r in res["results"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(results)
    for i, res in enumerate(results):
        by_len = {r["prompt_tokens"]: r for r in res["results"]}
        for ax, key in zip(axes, ("prefill_tok_s", "decode_tok_s")):
            xs, med, lo, hi = [], [], [], []
            for j, length in enumerate(lengths):
                s = by_len.get(length, {}).get(key)
                if not s:
                    continue
                xs.append(j + (i - (len(results) - 1) / 2) * width)
                med.append(s["median"])
                lo.append(s["median"] - s["p10"])
                hi.append(s["p90"] - s["median"])
            ax.bar(xs, med, width=width, yerr=[lo, hi], capsize=3, label=label(res).replace("\n", " @ "))
    for ax, title in zip(axes, ("prefill (tokens/s)", "decode (tokens/s)")):
        ax.set_xticks(range(len(lengths)), [f"prompt {n}" for n in lengths])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("qwen-mobile bench: median with p10-p90")
    return _save_figure(fig, out)


def _main(argv=None) -> int:
    """`python -m qwen_mobile.runtime.bench BUNDLE --out JSON ...`: the worker behind `qwen-mobile bench`."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m qwen_mobile.runtime.bench")
    p.add_argument("bundle")
    p.add_argument("--out", required=True)
    p.add_argument("--prompt-lengths", required=True)
    p.add_argument("--gen", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args(argv)
    baseline = current_rss_bytes()
    from .bundle import Bundle

    try:
        bundle = Bundle(args.bundle)
        result = run_bench(bundle, [int(x) for x in args.prompt_lengths.split(",")], args.gen, args.runs,
                           args.warmup, args.seed, baseline_rss=baseline)
        validate_bench(result)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
