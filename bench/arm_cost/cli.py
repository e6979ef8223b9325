"""python -m bench.arm_cost: guest instructions and bytes per decoded and per prefilled token on aarch64, ours vs
llama.cpp, exact under qemu (see bench/README.md, "ARM cost")."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import tools
from .counting import Counts, function_profile, per_token, profile_per_token, run_counted

GROUPS = (("insns", "instructions"), ("simd_fp", "SIMD/FP data processing"), ("load_store", "loads/stores"),
          ("other", "everything else"), ("dot", "  of SIMD: dot products"), ("mmla", "  of SIMD: matrix mla"),
          ("bytes_loaded", "bytes loaded"), ("bytes_stored", "bytes stored"))


@dataclass
class Plan:
    """The two token counts of each difference: decode = gen short/long, prefill = prompt short/long."""

    prompt: int = 8
    prefill_long: int = 40
    gen_short: int = 4
    gen_long: int = 12


def prompt_ids(bundle: Path, n: int) -> str:
    """A fixed prompt spread over the vocabulary, stop ids stepped over (as check_arm64.sh); prefixes agree."""
    m = json.loads((bundle / "manifest.json").read_text())
    v, stop = m["model"]["config"]["vocab_size"], set(m["tokenizer"]["stop_ids"])
    ids = [(7 + 37 * i) % v for i in range(n)]
    return ",".join(str(t if t not in stop else (t + 1) % v) for t in ids)


def ours_argv(pkg: Path, bundle: Path, prompt: int, gen: int) -> list[str]:
    # The package's own loader and libraries: no sysroot, no environment needed. --no-verify: hashing 400 MB under
    # qemu costs minutes and cancels anyway.
    return [pkg / "lib/ld-linux-aarch64.so.1", "--library-path", pkg / "lib", pkg / "bin/qwen-bench",
            "--bundle", bundle, "--prompt-ids", prompt_ids(bundle, prompt), "--gen", gen, "--runs", 1, "--warmup", 0,
            "--threads", 1, "--no-power", "--no-verify", "--emulated", "yes"]


def ours_image_argvs(pkg: Path, bundle: Path, size: tuple[int, int], rgb: Path, text: int) -> tuple[list, list]:
    """Two runs of ours that differ only by one image: [vision_start, image, vision_end] + `text` ids with the image
    (expanded by the runner to the size's tokens), and a text prompt of the same expanded length. Their difference is
    what one image adds: its encode_image call and the embedding path (embed_tokens, the splice)."""
    m = json.loads((bundle / "manifest.json").read_text())
    vision = m.get("vision")
    if not vision:
        raise SystemExit(f"--image-size: {bundle} has no vision section (export a checkpoint with a vision tower)")
    entry = next((e for e in vision["images"] if (e["height"], e["width"]) == size), None)
    if entry is None:
        listed = ", ".join(f"{e['height']}x{e['width']}" for e in vision["images"])
        raise SystemExit(f"--image-size {size[0]}x{size[1]}: {bundle} encodes {listed}")
    span = [vision["vision_start_token_id"], vision["image_token_id"], vision["vision_end_token_id"]]
    with_image = ",".join(map(str, span)) + "," + prompt_ids(bundle, text)
    base = ours_argv(pkg, bundle, text, 1)
    at = base.index("--prompt-ids") + 1
    image_argv = base[:at] + [with_image] + base[at + 1:] + ["--image", rgb, "--image-size", f"{size[0]}x{size[1]}"]
    text_argv = ours_argv(pkg, bundle, entry["tokens"] + 2 + text, 1)
    return image_argv, text_argv


def llama_argv(exe: Path, gguf: Path, prompt: int, gen: int) -> list[str]:
    return [exe, "-m", gguf, "-p", prompt, "-n", gen, "-t", 1, "-r", 1, "--no-warmup", "-o", "json"]


def fmt(v: float, key: str) -> str:
    if key.startswith("bytes"):
        return f"{v / 1e6:9.2f} MB"
    return f"{v / 1e6:9.2f} M "


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b else "     -"


def top_functions(prof: dict[str, dict[str, float]], total: float, n: int) -> list[dict]:
    rows = sorted(prof.items(), key=lambda kv: (-kv[1]["insns"], kv[0]))[:n]
    return [{"function": k, "share": v["insns"] / total if total else 0.0, **v} for k, v in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.arm_cost", description=__doc__)
    ap.add_argument("--preset", default="0_8b", help="model shape for the random checkpoint (default 0_8b)")
    ap.add_argument("--bundle", type=Path, help="our bundle (default: export the preset's random checkpoint, cached)")
    ap.add_argument("--ours-package", type=Path, help="a qwen-bench package folder (package_arm64_glibc.sh) to count "
                    "instead of building the working tree's (e.g. an older commit's, for before/after)")
    ap.add_argument("--gguf", type=Path, help="llama.cpp's GGUF (default: convert + quantize the same checkpoint)")
    ap.add_argument("--profiles", nargs="+", default=["a76"], choices=sorted(tools.PROFILES),
                    help="CPU profiles: a76 = -cpu cortex-a76 (Armv8.2+dotprod); v86 = -cpu max,sve=off,sme=off "
                         "(Armv8.6 + i8mm + bf16); llama.cpp is built with the matching -march")
    ap.add_argument("--peers", nargs="+", default=["ours", "llama_cpp"], choices=["ours", "llama_cpp"])
    ap.add_argument("--prompt", type=int, default=Plan.prompt, help="prompt tokens of the decode runs and the "
                    "short prefill run (default 8)")
    ap.add_argument("--prefill-long", type=int, default=Plan.prefill_long, help="prompt of the long prefill run (40)")
    ap.add_argument("--gen", type=int, nargs=2, default=[Plan.gen_short, Plan.gen_long], metavar=("SHORT", "LONG"),
                    help="generated tokens of the two decode runs (default 4 12: 8 decode steps apart)")
    ap.add_argument("--no-prefill", action="store_true", help="decode only")
    ap.add_argument("--no-decode", action="store_true", help="prefill only")
    ap.add_argument("--image-size", metavar="HxW", help="ours, a bundle with image methods: also count what one image "
                    "of this size adds (a prompt with it minus a text prompt of the same length); with --no-decode "
                    "--no-prefill, only that")
    ap.add_argument("--top", type=int, default=15, help="functions shown per decoded token (default 15)")
    ap.add_argument("--jobs", type=int, default=1, help="qemu runs at once (counts do not depend on it)")
    ap.add_argument("--cache", type=Path, default=tools.default_cache(), help="build/model cache "
                    "(default ~/.cache/qwen_mobile/arm_cost, or QWEN_ARM_COST_CACHE)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing missing tools")
    a = ap.parse_args(argv)
    plan = Plan(a.prompt, a.prefill_long, *a.gen)
    if a.no_prefill and a.no_decode and not a.image_size:
        ap.error("--no-prefill with --no-decode leaves nothing to count")
    image_size = None
    if a.image_size:
        try:
            image_size = tuple(int(v) for v in a.image_size.lower().split("x"))
            assert len(image_size) == 2 and min(image_size) > 0
        except (ValueError, AssertionError):
            ap.error(f"--image-size {a.image_size!r}: expected HxW, e.g. 224x224")
        if "ours" not in a.peers:
            ap.error("--image-size counts ours only: keep 'ours' in --peers")
    phases = [phase for phase, skip in (("decode", a.no_decode), ("prefill", a.no_prefill)) if not skip]
    if not (0 < plan.gen_short < plan.gen_long):
        ap.error("--gen: expected 0 < SHORT < LONG")
    if not (0 < plan.prompt < plan.prefill_long):
        ap.error("--prompt/--prefill-long: expected 0 < PROMPT < PREFILL_LONG")
    if a.bundle and not (a.bundle / "manifest.json").exists():
        ap.error(f"--bundle {a.bundle}: no manifest.json there")
    if a.ours_package and not (a.ours_package / "bin/qwen-bench").exists():
        ap.error(f"--ours-package {a.ours_package}: no bin/qwen-bench there")
    if a.gguf and not a.gguf.is_file():
        ap.error(f"--gguf {a.gguf}: no such file")

    cache = a.cache.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tools.ensure_system_tools(install=not a.no_install)
    plugin = tools.build_plugin(cache)
    profiles = [tools.PROFILES[p] for p in a.profiles]

    # The long pole first, in the background: llama.cpp for every profile while ours and the weights are prepared.
    with ThreadPoolExecutor(max_workers=1) as bg:
        llama_jobs = {}
        if "llama_cpp" in a.peers:
            llama_jobs = {p.name: bg.submit(tools.build_llama, cache, p) for p in profiles}
        pkg = None
        if "ours" in a.peers:
            pkg = a.ours_package.resolve() if a.ours_package else tools.build_qwen_bench(cache)
        bundle = (a.bundle or tools.ensure_bundle(cache, a.preset)).resolve() if "ours" in a.peers else None
        llama = {name: job.result() for name, job in llama_jobs.items()}
    gguf = (a.gguf or tools.ensure_gguf(cache, a.preset)).resolve() if "llama_cpp" in a.peers else None

    # Every run gets a fixed slot (its empty working directory) so that repeated invocations see the same paths.
    runs: list[tuple[str, str, str, str, list, bool]] = []  # (profile, peer, phase, which, argv, symbolize)
    for p in profiles:
        for peer in a.peers:
            # ours: --gen G is G - 1 decode steps after the prefill's token, so G short/long differ by the steps;
            # llama-bench: -p 0 -n N is N decode steps from an empty context, -p N -n 0 one N-token prefill batch.
            if peer == "ours":
                decode = [ours_argv(pkg, bundle, plan.prompt, g) for g in (plan.gen_short, plan.gen_long)]
                prefill = [ours_argv(pkg, bundle, n, 1) for n in (plan.prompt, plan.prefill_long)]
            else:
                exe = llama[p.name]
                decode = [llama_argv(exe, gguf, 0, g) for g in (plan.gen_short, plan.gen_long)]
                prefill = [llama_argv(exe, gguf, n, 0) for n in (plan.prompt, plan.prefill_long)]
            for phase, argvs in (("decode", decode), ("prefill", prefill)):
                if phase in phases:
                    for which, argv in zip(("short", "long"), argvs):
                        runs.append((p.name, peer, phase, which, argv, True))
            if peer == "ours" and image_size:
                rgb = cache / f"test-card-{image_size[0]}x{image_size[1]}.rgb"
                sys.path.insert(0, str(tools.ROOT))
                from qwen_mobile.runtime.images import synthetic_image

                rgb.write_bytes(synthetic_image(*image_size).permute(1, 2, 0).contiguous().numpy().tobytes())
                with_image, same_length = ours_image_argvs(pkg, bundle, image_size, rgb, plan.prompt)
                runs.append((p.name, peer, "image", "short", same_length, True))  # short: without the image
                runs.append((p.name, peer, "image", "long", with_image, True))

    logs = cache / "runs"
    logs.mkdir(exist_ok=True)
    counts: dict[tuple, Counts] = {}

    def one(run):
        prof, peer, phase, which, argv, sym = run
        # A fixed working directory per kind of run (same path in every invocation, equal-length names), locked so
        # that two invocations never empty each other's.
        slot = cache / "work" / f"{prof}-{('ours', 'llama_cpp').index(peer)}" \
            f"{('decode', 'prefill', 'image').index(phase)}{('short', 'long').index(which)}"
        slot.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{slot}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            c = run_counted(argv, cpu=tools.PROFILES[prof].cpu, plugin=plugin, workdir=slot,
                            out_prefix=logs / f"{prof}-{peer}-{phase}-{which}", symbolize=sym)
        tools.log(f"{prof} {peer} {phase} {which}: {c.totals['insns'] / 1e9:.3f} G instructions "
                  f"({c.wall_s:.0f} s)")
        return (prof, peer, phase, which), c

    tools.log(f"{len(runs)} counted runs")
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        for key, c in ex.map(one, runs):
            counts[key] = c

    steps = {"decode": plan.gen_long - plan.gen_short, "prefill": plan.prefill_long - plan.prompt}
    result = {"bench": "arm_cost", "schema": 1, "preset": a.preset,
              "ours": {"runner": "qwen-bench (aarch64 glibc package)", "package": str(pkg) if pkg else None,
                       "bundle": str(bundle) if bundle else None},
              "llama_cpp": {"runner": f"llama-bench, llama-cpp-python {tools.LLAMA_CPP_PYTHON} sdist, static",
                            "gguf": str(gguf) if gguf else None},
              "plan": vars(plan) | {"decode_tokens": steps["decode"], "prefill_tokens": steps["prefill"],
                                    "threads": 1},
              "host": {"qemu": subprocess.run([tools.QEMU, "--version"], stdout=subprocess.PIPE,
                                              text=True).stdout.splitlines()[0], "machine": platform.machine()},
              "profiles": {}}
    for p in profiles:
        res = {"cpu": p.cpu, "llama_march": p.march, "about": p.about, "per_token": {}, "runs": {},
               **{f"top_functions_{phase}": {} for phase in phases}}
        for peer in a.peers:
            for phase in phases:
                n = steps[phase]
                s, l = counts[(p.name, peer, phase, "short")], counts[(p.name, peer, phase, "long")]
                res["per_token"].setdefault(peer, {})[phase] = per_token(s, l, n)
                res["runs"].setdefault(peer, {})[phase] = {"short": s.summary(), "long": l.summary(),
                                                           "vcpus": [s.vcpus, l.vcpus]}
                prof = profile_per_token(function_profile(s), function_profile(l), n)
                total = res["per_token"][peer][phase]["insns"]
                res[f"top_functions_{phase}"][peer] = top_functions(prof, total, max(a.top, 40))
        if image_size:
            s, l = counts[(p.name, "ours", "image", "short")], counts[(p.name, "ours", "image", "long")]
            res["per_image"] = {"size": list(image_size), "ours": per_token(s, l, 1)}
            prof = profile_per_token(function_profile(s), function_profile(l), 1)
            res["top_functions_image"] = {"ours": top_functions(prof, res["per_image"]["ours"]["insns"], 40)}
            print(f"\n== one {image_size[0]}x{image_size[1]} image, profile {p.name}, ours: "
                  f"{res['per_image']['ours']['insns'] / 1e6:.1f} M instructions "
                  f"(SIMD/FP {res['per_image']['ours']['simd_fp'] / 1e6:.1f} M, "
                  f"{res['per_image']['ours']['bytes_loaded'] / 1e6:.1f} MB loaded)")
            for r in res["top_functions_image"]["ours"][:a.top]:
                print(f"   {r['insns'] / 1e6:9.2f} M {100 * r['share']:5.1f} %  {r['function'][:110]}")
        if len(a.peers) == 2 and phases:
            res["ratios_ours_over_llama_cpp"] = {
                phase: {k: (res["per_token"]["ours"][phase][k] / v if v else None)
                        for k, v in res["per_token"]["llama_cpp"][phase].items()}
                for phase in res["per_token"]["ours"]}
        result["profiles"][p.name] = res
        if phases:
            print_profile(p, res, a.peers, steps, a.top)

    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_name(a.json.name + ".partial")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, a.json)
        print(f"\nwrote {a.json}")
    return 0


def print_profile(p, res, peers, steps, top) -> None:
    print(f"\n== per token, profile {p.name}: qemu -cpu {p.cpu}; llama.cpp -march={p.march}; one thread")
    phases = list(res["per_token"][peers[0]])
    head = f"{'':28}"
    for phase in phases:
        label = f"{phase} ({steps[phase]} tokens)"
        head += f" | {label:^37}" if len(peers) == 2 else f" | {label:^13}"
    print(head)
    sub = f"{'':28}" + "".join(" | " + ("         ours     llama.cpp   ratio" if len(peers) == 2 else f"{peers[0]:>13}")
                               for _ in phases)
    print(sub)
    for key, label in GROUPS:
        line = f"{label:28}"
        for phase in phases:
            vals = [res["per_token"][peer][phase][key] for peer in peers]
            line += " | " + " ".join(fmt(v, key) for v in vals)
            if len(peers) == 2:
                line += " " + ratio(vals[0], vals[1])
        print(line)
    for phase, peer in ((phase, peer) for phase in phases for peer in peers):
        rows = res[f"top_functions_{phase}"][peer][:top]
        what = {"decode": "decoded", "prefill": "prefilled"}[phase]
        print(f"\n   {peer}: top functions per {what} token (instructions, share, SIMD/FP, bytes loaded)")
        for r in rows:
            print(f"   {r['insns'] / 1e6:9.2f} M {100 * r['share']:5.1f} %  simd {r['simd_fp'] / 1e6:8.2f} M  "
                  f"ld {r['bytes_loaded'] / 1e6:8.2f} MB  {r['function'][:110]}")
