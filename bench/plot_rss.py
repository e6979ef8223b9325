"""Plot an export's memory over time from bench/tree_rss.sh samples, with the stages from its manifest.

    python bench/plot_rss.py rss.txt BUNDLE/manifest.json --budget-gb 16 --out bench/results/figures/export_4b_rss.png

Drawn: the exporter's RSS; exporter + forked XNNPACK worker RSS (an upper bound: the pages the worker shares with the
exporter after fork count twice); and the exporter plus the worker's growth since the fork (the estimate)."""

from __future__ import annotations

import argparse
import json


def private_estimate(rows: list[tuple[int, int, int]]) -> list[int]:
    """Exporter RSS plus what the worker added since it was forked (kB per sample).

    fork copies page tables, so a worker's RSS starts at its parent's with nothing copied; its growth from there
    (own allocations and copy-on-write copies) is memory the pair really holds on top of the exporter's."""
    out, base = [], None
    for _, own, tree in rows:
        worker = tree - own
        if worker > own // 4:  # a worker sized like its parent: the fork
            base = worker if base is None else base
            out.append(own + max(0, worker - base))
        else:
            base = None
            out.append(tree)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="bench/tree_rss.sh output: unix time, exporter RSS kB, tree RSS kB per line")
    ap.add_argument("manifest", help="the bundle's manifest.json (export.stage_seconds)")
    ap.add_argument("--budget-gb", type=float, default=None, help="draw this budget as a horizontal line")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [tuple(map(int, line.split())) for line in open(args.trace) if len(line.split()) == 3]
    t0 = rows[0][0]
    t = [r[0] - t0 for r in rows]
    manifest = json.load(open(args.manifest))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, [r[1] * 1024 / 1e9 for r in rows], label="exporter RSS")
    ax.plot(t, [r[2] * 1024 / 1e9 for r in rows], "--", lw=0.8, label="exporter + forked worker RSS (upper bound)")
    ax.plot(t, [v * 1024 / 1e9 for v in private_estimate(rows)], label="exporter + worker's growth since fork")
    start = 0.0
    for name, seconds in manifest["export"]["stage_seconds"].items():
        ax.axvline(start, color="0.8", lw=0.8)
        ax.text(start + seconds / 2, 0.3, name, ha="center", fontsize=8, rotation=90)
        start += seconds
    if args.budget_gb:
        ax.axhline(args.budget_gb, color="red", lw=1, label=f"budget {args.budget_gb:g} GB")
    peak = manifest["export"]["peak_rss_bytes"] / 1e9
    ax.set_title(args.title or f"{manifest['model']['id']} {manifest['recipe']['qlinear']}: exporter peak {peak:.1f} GB")
    ax.set_xlabel("seconds since start (host run; times depend on load)")
    ax.set_ylabel("GB")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
