"""Speed-ups of ExecuTorch's XNNPACK lowering that replace private attributes of ExecuTorch and torch.

Each module patches one internal for the length of a `with` block and gives the very same program bytes as
ExecuTorch's own path (README.md in this folder says what each replaces, why it is faster and what it copies).
They are written against one pair of versions, the exact pins of pyproject.toml (torch 2.13.0, executorch 1.5.1):
`lowering_shortcuts()` enables them only when the installed versions are those pins, and otherwise runs ExecuTorch's
plain path (slower, same program) and says so once. `QWEN35_PLAIN_LOWERING=1` forces the plain path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from pathlib import Path

# The packages whose private attributes the shortcuts replace; their exact pins are read from pyproject.toml.
PATCHED_PACKAGES = ("torch", "executorch")
FORCE_PLAIN_ENV = "QWEN35_PLAIN_LOWERING"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # export/lowering_shortcuts/ -> repository root


class PlainLoweringWarning(UserWarning):
    """The lowering shortcuts are off for this process: the export takes ExecuTorch's plain (slower) path."""


def _exact_pins(requirements: list[str]) -> dict[str, str]:
    """{name: version} for the `name==version` requirements of PATCHED_PACKAGES (markers and extras ignored)."""
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*(;.*)?", requirement)
        if match and match.group(1).lower() in PATCHED_PACKAGES and not (match.group(3) or "").strip("; "):
            pins[match.group(1).lower()] = match.group(2)
    return pins


@functools.cache
def pinned_versions() -> dict[str, str]:
    """The versions the shortcuts were written against: pyproject.toml's exact pins of torch and executorch.

    From a source checkout the file itself is read (an edited pin counts before reinstalling); from an installed
    wheel, the requirements pip recorded from that same file."""
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover
        tomllib = None
    project = tomllib.loads(_PYPROJECT.read_text())["project"] if _PYPROJECT.is_file() and tomllib else {}
    if project.get("name") == "qwen-mobile":
        requirements = project["dependencies"]
    else:  # pragma: no cover - a wheel install has no pyproject.toml beside the package
        from importlib.metadata import requires

        requirements = requires("qwen-mobile") or []
    pins = _exact_pins(requirements)
    missing = [name for name in PATCHED_PACKAGES if name not in pins]
    if missing:
        raise RuntimeError(f"{_PYPROJECT}: [project] dependencies must pin {' and '.join(missing)} exactly "
                           "(name==version): the lowering shortcuts are enabled only on those versions")
    return pins


def _release(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0': a local build tag (CPU wheel) is the same release."""
    return version.split("+", 1)[0]


def installed_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    installed = {}
    for name in PATCHED_PACKAGES:
        try:
            installed[name] = _release(version(name))
        except PackageNotFoundError:
            installed[name] = "not installed"
    return installed


_said_plain = False  # the plain path is announced once per process, not once per lowering


def _say_plain_once(reason: str) -> None:
    global _said_plain
    if not _said_plain:
        _said_plain = True
        warnings.warn(f"lowering: {reason}; taking ExecuTorch's plain lowering path (the same program, slower)",
                      PlainLoweringWarning, stacklevel=3)


def shortcuts_enabled() -> bool:
    """Whether this process may use the shortcuts: not forced off by $QWEN35_PLAIN_LOWERING, and torch and
    executorch installed at exactly the pinned versions. The first `False` warns (PlainLoweringWarning), once."""
    if os.environ.get(FORCE_PLAIN_ENV, "") not in ("", "0"):
        _say_plain_once(f"{FORCE_PLAIN_ENV}={os.environ[FORCE_PLAIN_ENV]} turns the lowering shortcuts off")
        return False
    pinned, installed = pinned_versions(), installed_versions()
    if installed != pinned:
        found = ", ".join(f"{name} {installed[name]} (pinned {pinned[name]})" for name in PATCHED_PACKAGES)
        _say_plain_once(f"the lowering shortcuts are written for the pinned versions, installed: {found}")
        return False
    return True


@contextlib.contextmanager
def lowering_shortcuts(programs: dict, parallel: bool | None = None, share_constants: bool = True,
                       lean: bool = True):
    """Within the block, `to_edge_transform_and_lower(programs, [XnnpackPartitioner()])` takes the shortcuts asked
    for, if `shortcuts_enabled()`; otherwise none of them.

    parallel: preprocess XNNPACK partitions in two processes (parallel_preprocess.py); None = when there are at least
    two CPUs. share_constants: the per-partition copies ExecuTorch makes for preprocessing share the weight tensors
    (parallel_preprocess.shared_constant_copies). lean: skip the edge lowering's two retraces that change nothing
    (decompositions.py), the edge and XNNPACK passes with nothing to act on (edge_passes.py, xnnpack_passes.py) and
    the per-partition code generation (partitioning.py)."""
    from .decompositions import lean_decompositions
    from .edge_passes import lean_edge_passes
    from .parallel_preprocess import parallel_preprocess, quiet_pytree_spec_warnings, shared_constant_copies
    from .partitioning import lean_partitioning
    from .xnnpack_passes import lean_xnnpack_passes

    if (parallel is not False or share_constants or lean) and not shortcuts_enabled():
        parallel = share_constants = lean = False
    if parallel is None:
        parallel = len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else os.cpu_count() >= 2
    # The warnings filter first: building XNNPACK's pattern graphs (xnnpack_passes) warns too. It patches nothing.
    with (quiet_pytree_spec_warnings(), parallel_preprocess(parallel), shared_constant_copies(share_constants),
          lean_decompositions(programs, lean), lean_edge_passes(lean), lean_partitioning(lean),
          lean_xnnpack_passes(lean)):
        yield
