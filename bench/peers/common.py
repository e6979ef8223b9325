"""Shared pieces of the peer benchmarks: the result schema, process-tree measurement, statistics, tables.

Every peer returns one `PeerResult` per artifact it builds. The main export benchmark puts its own exporter's
results in the same schema and calls `ratios()` / `format_table()` on the combined list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

SCHEMA_VERSION = 1

# Keys compared by `ratios()`: (result field, True if bigger is better).
RATIO_KEYS = (
    ("size_bytes", False),
    ("export_s", False),
    ("export_peak_rss_bytes", False),
    ("prefill_tok_s.128", True),
    ("prefill_tok_s.512", True),
    ("decode_tok_s", True),
    ("run_peak_rss_bytes", False),
)


@dataclasses.dataclass
class PeerResult:
    """One artifact of one peer, measured on this host. Times are wall-clock, sizes are bytes (GB = 1e9)."""

    peer: str  # "upstream_executorch" | "llama_cpp" | "qwen_mobile" ...
    variant: str  # "fp32", "8da4w_emb4", "q4_0", ...
    preset: str | None = None
    checkpoint: str | None = None
    artifact: str | None = None
    size_bytes: int | None = None
    export_s: float | None = None  # checkpoint folder -> final artifact, all steps
    export_steps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # step -> {s, peak_rss_bytes}
    export_peak_rss_bytes: int | None = None  # max over steps of the step's process-tree peak
    prefill_tok_s: dict[str, float] = dataclasses.field(default_factory=dict)  # "128" -> tok/s
    prefill_mode: str | None = None  # "batched" or "token_by_token" (static T=1 forward)
    decode_tok_s: float | None = None  # from the median per-token time
    decode_tok_s_p10: float | None = None  # slow tail: 10th percentile of per-token speed
    decode_tok_s_p90: float | None = None
    decode_steps: int | None = None
    load_s: float | None = None
    run_peak_rss_bytes: int | None = None  # peak RSS of the separate run process (ru_maxrss)
    threads: int | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    commands: list[list[str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # How the peer was run where it has choices that change its speed, and why (llama.cpp: its weight buffer types,
    # the configurations tried and how each ended; bench/peers/llamacpp.py `choose_bufts`).
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str):
        obj: Any = self.to_dict()
        for part in dotted.split("."):
            if not isinstance(obj, dict) or part not in obj:
                return None
            obj = obj[part]
        return obj


@dataclasses.dataclass
class Tracked:
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # ru_maxrss: the largest single process of the tree (exact)
    polled_tree_rss_bytes: int
    ru_maxrss_bytes: int
    stdout: str
    stderr: str


def run_tracked(cmd: Sequence[str], *, cwd: str | None = None, env: dict | None = None, nice: int = 0,
                log_path: Path | None = None, poll_s: float = 0.2, check: bool = True) -> Tracked:
    """Run `cmd`, measuring wall time and peak memory of its whole process tree.

    Two views of peak memory: `ru_maxrss` from wait4 (largest single process of the tree, exact; reported as
    `peak_rss_bytes`) and the polled sum of RSS over the tree. The sum double-counts pages that forked children
    share with their parent: export_llm's tree polled 21.7 GB while its largest process peaked at 13.6 GB.
    """
    import psutil

    out = open(log_path, "w") if log_path else subprocess.PIPE
    preexec = (lambda: os.nice(nice)) if nice else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT if log_path else subprocess.PIPE,
                            text=True, preexec_fn=preexec)
    polled = 0
    stdout_chunks: list[str] = []
    ps = psutil.Process(proc.pid)
    # Pipes are drained by a thread so a chatty child cannot block on a full pipe while we poll.
    import threading

    def drain(stream, sink):
        for line in stream:
            sink.append(line)

    threads = []
    stderr_chunks: list[str] = []
    if not log_path:
        threads = [threading.Thread(target=drain, args=(proc.stdout, stdout_chunks), daemon=True),
                   threading.Thread(target=drain, args=(proc.stderr, stderr_chunks), daemon=True)]
        for t in threads:
            t.start()
    rusage = None
    status = None
    while True:
        try:
            tree = [ps] + ps.children(recursive=True)
            polled = max(polled, sum(p.memory_info().rss for p in tree if p.is_running()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid != 0:
            break
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join(timeout=5)
    if log_path:
        out.close()
        text = Path(log_path).read_text(errors="replace")
        stdout, stderr = text, ""
    else:
        stdout, stderr = "".join(stdout_chunks), "".join(stderr_chunks)
    ru = int(rusage.ru_maxrss) * 1024  # Linux reports KiB
    res = Tracked(proc.returncode, wall, ru, polled, ru, stdout, stderr)
    if check and proc.returncode != 0:
        tail = (stdout + stderr)[-4000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return res


def last_json_line(text: str) -> dict:
    """Workers print their result as the last line starting with '{'."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise ValueError("no JSON line in worker output:\n" + text[-3000:])


def speed_stats(step_seconds: Sequence[float]) -> dict[str, float]:
    """tok/s from the median per-step time; p10/p90 of per-step speed (p10 = slow tail)."""
    s = sorted(step_seconds)
    n = len(s)

    def q(frac: float) -> float:  # nearest-rank quantile of the times
        return s[min(n - 1, max(0, round(frac * (n - 1))))]

    return {
        "tok_s": 1.0 / statistics.median(s),
        "tok_s_p10": 1.0 / q(0.9),
        "tok_s_p90": 1.0 / q(0.1),
        "median_ms": 1e3 * statistics.median(s),
    }


def versions(*packages: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": str(os.cpu_count())}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "absent"
    return out


def dir_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ratios(results: Sequence[PeerResult], baseline: PeerResult) -> dict[str, dict[str, float | None]]:
    """For each result: metric(result) / metric(baseline). >1 means bigger; check RATIO_KEYS for direction."""
    out: dict[str, dict[str, float | None]] = {}
    for r in results:
        row: dict[str, float | None] = {}
        for key, _ in RATIO_KEYS:
            a, b = r.get(key), baseline.get(key)
            row[key] = (a / b) if (a is not None and b) else None
        out[f"{r.peer}:{r.variant}"] = row
    return out


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "bytes":
        return f"{v / 1e6:,.0f} MB"
    if kind == "s":
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def format_table(results: Sequence[PeerResult], baseline: PeerResult | None = None) -> str:
    cols = [("size", "size_bytes", "bytes"), ("export s", "export_s", "s"),
            ("export RSS", "export_peak_rss_bytes", "bytes"), ("pp128 tok/s", "prefill_tok_s.128", "x"),
            ("pp512 tok/s", "prefill_tok_s.512", "x"), ("decode tok/s", "decode_tok_s", "x"),
            ("run RSS", "run_peak_rss_bytes", "bytes")]
    head = ["peer:variant"] + [c[0] for c in cols]
    rows = []
    for r in results:
        rows.append([f"{r.peer}:{r.variant}" + (" (ERROR)" if r.error else "")] + [_fmt(r.get(c[1]), c[2]) for c in cols])
    if baseline is not None:
        rat = ratios(results, baseline)
        for r in results:
            row = rat[f"{r.peer}:{r.variant}"]
            rows.append([f"  / {baseline.peer}:{baseline.variant}"] +
                        ["-" if row[c[1]] is None else f"{row[c[1]]:.2f}x" for c in cols])
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
             for row in [head] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def load_note(when: str) -> str:
    """Other jobs share this 2-core machine: record the load average next to every measurement."""
    one, five, fifteen = os.getloadavg()
    return f"loadavg {when}: {one:.2f} {five:.2f} {fifteen:.2f}"
