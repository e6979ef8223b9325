"""Plot what each fine-tune against greedy loops bought and what it cost: attacks.json -> attacks.png.

    python models/nano/plot_attacks.py            # reads attacks.json beside it, writes attacks.png

attacks.json holds the measured numbers the README's tables quote (``evaluate.py DIR --loops 128 --def-prompts 128``
for each fine-tune). Left: held-out perplexity against the share of 128 greedy continuations of held-out windows that
repeat a line. Right: the same perplexity against the share of 128 user-shaped definition prompts whose greedy
continuation fails the goal's rules, where it was measured. The dashed line is the held-out code's own share: what
real code does in the same 64 tokens. The pre-trained weights are the hollow circle, the shipped fine-tune the star.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((HERE / "attacks.json").read_text())
    panels = (("windows_line_share", "heldout_text_windows_line_share",
               "greedy continuations of 128 held-out windows\nthat repeat a line"),
              ("definitions_failing_share", "heldout_text_definitions_failing_share",
               "greedy continuations of 128 held-out definition\nprompts failing the goal's rules"))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharex=True)
    markers = "ovs^DPXph<>d"
    for ax, (key, text_key, label) in zip(axes, panels):
        for i, m in enumerate(data["models"]):
            if m[key] is None:
                continue
            base, shipped = m["session"] is None, m.get("shipped", False)
            ax.scatter(m["ppl"], 100 * m[key], s=160 if shipped else 80 if base else 45,
                       marker="*" if shipped else "o" if base else markers[i % len(markers)],
                       color="black" if shipped or base else f"C{i % 10}",
                       facecolors="none" if base else None,
                       label=m["name"] + ("" if base else f" (session {m['session']})") + (": shipped" if shipped else ""))
        ax.axhline(100 * data["reference"][text_key], ls="--", color="grey", label="the held-out code itself")
        ax.set_ylim(0, 100)
        ax.set_xlabel("held-out packages perplexity (lower is better)")
        ax.set_ylabel(f"% of {label}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.66, wspace=0.25)
    fig.suptitle("nano: fine-tunes against greedy loops (goal: no repeated line on the demo prompts)")
    tmp = HERE / "attacks.png.tmp"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, HERE / "attacks.png")
    print(f"wrote {HERE / 'attacks.png'}")


if __name__ == "__main__":
    main()
