"""XNNPACK's per-partition preprocessing, split between this process and a forked worker.

Lowering a 0.8B model spends about half its time in `XnnpackBackend.preprocess`: every delegated partition of every
method (hundreds) runs the backend's graph passes and serializes its subgraph, one after another, in Python, on one
core. The partitions are independent, so `parallel_preprocess` replaces the backend's `preprocess_multimethod` (the
hook ExecuTorch provides for lowering all partitions of all methods together) for the duration of a `with` block:
a forked child preprocesses part of the partitions while this process does the rest, and the child's results come
back pickled. Fork gives the child every partition program without serializing graphs (edge-dialect programs do not
pickle); only `PreprocessResult`s (bytes and plain data) travel. Results are reassembled in the original order, so
the emitted program is byte-identical to a sequential lowering (tests/export/lowering_shortcuts/test_byte_identity.py).

`shared_constant_copies` removes a copy of its own: before preprocessing, ExecuTorch deep-copies every partition's
program "in case backends change graph inside preprocess", weights included, all partitions at once, so a 4B export
briefly held its quantized weights twice (+5 GB). XNNPACK's preprocess rewrites graphs but only reads the constant
tensors (it serializes them), so inside that block the copy shares them: graphs are still copied, tensors are not. The
bytes are unchanged (tests/export/lowering_shortcuts/test_byte_identity.py).

The child runs torch single-threaded and never enters an OpenMP region, which is what makes fork after torch has
used its thread pool safe. A failed child fails the export loudly (its traceback is on stderr), never quietly
degrades to the sequential path.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback

from .patching import patched


def partition_cost(program) -> int:
    """Relative cost of preprocessing a partition: its node count (the backend's passes are per node)."""
    return sum(1 for _ in program.graph_module.graph.nodes)


def split_jobs(costs: dict, parts: int) -> list[list]:
    """Longest-processing-time-first: each job, heaviest first, goes to the part with the least work so far."""
    loads, assigned = [0] * parts, [[] for _ in range(parts)]
    for job, cost in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])):
        part = loads.index(min(loads))
        assigned[part].append(job)
        loads[part] += cost
    return assigned


@contextlib.contextmanager
def quiet_pytree_spec_warnings():
    """torch warns each time a pytree spec is copied or unpickled that `LeafSpec` is deprecated (ExecuTorch deep-copies
    every partition's program, and the worker's results are pickled): hundreds of lines per export that say nothing
    about the user's model."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        yield


def _preprocess_in_child(backend_cls, edge_programs, compile_specs, jobs, path) -> None:
    """Runs in the forked child: never returns."""
    status = 1
    # Ctrl-C reaches the whole process group: the parent owns the interruption (it kills this worker and reports one
    # line); a second traceback from here would bury it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)  # no OpenMP region in a forked child (its pool's threads did not survive the fork)
        results = {(m, i): backend_cls.preprocess(edge_programs[m][i], compile_specs[m][i]) for m, i in jobs}
        with open(path, "wb") as f:
            pickle.dump(results, f, protocol=pickle.HIGHEST_PROTOCOL)
        status = 0
    except BaseException:  # noqa: BLE001  anything: report it and let the parent fail
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(status)


# ru_maxrss of the last forked worker, in bytes: the export reports it beside its own peak (RUSAGE_SELF misses it).
last_worker_peak_rss_bytes = 0
# The highest sampled sum of this process's and the worker's proportional set sizes while the worker ran, in bytes.
# Neither RSS answers "how much memory did the export use at once": right after fork the worker's RSS is its
# parent's (page tables are copied, pages are not), so the RSS sum counts every shared page twice. PSS charges a
# page shared by k processes 1/k to each, so the two PSS values add up to the pages the pair holds.
last_pair_peak_pss_bytes = 0
PSS_SAMPLE_SECONDS = 0.25


def reset_memory_records() -> None:
    """Forget earlier workers' figures: an export reports only the workers it forked itself."""
    global last_worker_peak_rss_bytes, last_pair_peak_pss_bytes
    last_worker_peak_rss_bytes = last_pair_peak_pss_bytes = 0


def pss_bytes(pid: int | str = "self") -> int | None:
    """Proportional set size of a process (Linux /proc/PID/smaps_rollup), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024  # "Pss:  123456 kB"
    except OSError:
        pass
    return None


class PairPssSampler:
    """Samples PSS(self) + PSS(child) every `interval` seconds on a thread until stopped; `peak` is the highest sum.

    A sample is only taken when both values could be read, so a peak of 0 means "not measured" (no /proc, or the
    child was too short-lived), never "no memory". Spikes shorter than the interval can be missed: the peak is a
    lower bound of the true one, as the RSS sum is an upper bound.
    """

    def __init__(self, child_pid: int, interval: float = PSS_SAMPLE_SECONDS):
        self.child_pid, self.interval, self.peak = child_pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def _sample(self) -> None:
        mine, theirs = pss_bytes(), pss_bytes(self.child_pid)
        if mine is not None and theirs is not None:
            self.peak = max(self.peak, mine + theirs)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def _multimethod(backend_cls, edge_programs: dict, compile_specs: dict) -> dict:
    global last_worker_peak_rss_bytes, last_pair_peak_pss_bytes
    costs = {(m, i): partition_cost(p) for m, programs in edge_programs.items() for i, p in enumerate(programs)}
    mine, theirs = split_jobs(costs, 2)
    results = {}
    with tempfile.TemporaryDirectory(prefix="qwen-mobile-preprocess-") as tmp:
        path = os.path.join(tmp, "results.pkl")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork() if theirs else None
        if pid == 0:
            _preprocess_in_child(backend_cls, edge_programs, compile_specs, theirs, path)
        sampler = PairPssSampler(pid) if pid else contextlib.nullcontext()
        with sampler:  # sampling until the worker is reaped: it may outlast this process's share
            try:
                for m, i in mine:
                    results[(m, i)] = backend_cls.preprocess(edge_programs[m][i], compile_specs[m][i])
            except BaseException:
                if pid:  # interrupted or failed here: the worker's half is of no use any more
                    os.kill(pid, signal.SIGKILL)
                raise
            finally:
                if pid:
                    _, status, usage = os.wait4(pid, 0)
        if pid:
            last_worker_peak_rss_bytes = max(last_worker_peak_rss_bytes, usage.ru_maxrss * 1024)
            last_pair_peak_pss_bytes = max(last_pair_peak_pss_bytes, sampler.peak)
            if status != 0 or not os.path.isfile(path):
                raise RuntimeError(f"lowering: the forked XNNPACK preprocess worker failed (wait status {status}); "
                                   "its traceback is above")
            with open(path, "rb") as f:
                results.update(pickle.load(f))
    return {m: [results[(m, i)] for i in range(len(programs))] for m, programs in edge_programs.items()}


@contextlib.contextmanager
def parallel_preprocess(enabled: bool = True):
    """Within the block, XNNPACK lowers its partitions in two processes (when enabled and fork exists)."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    if not enabled or not hasattr(os, "fork"):
        yield
        return
    with patched(XnnpackBackend, "preprocess_multimethod", classmethod(_multimethod)):
        yield


@contextlib.contextmanager
def shared_constant_copies(enabled: bool = True):
    """Within the block, XNNPACK's per-partition program copies share the weight tensors of the original."""
    import copy

    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    if not enabled:
        yield
        return

    def copy_sharing_constants(cls, edge_program, compile_specs):
        tensors = [*edge_program.state_dict.values(), *edge_program.constants.values()]
        return copy.deepcopy(edge_program, memo={id(t): t for t in tensors})  # deepcopy reuses what memo holds

    with patched(XnnpackBackend, "copy_exported_program_for_preprocess", classmethod(copy_sharing_constants)):
        yield
