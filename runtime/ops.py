"""``qwen35::gated_delta_rule``: schema, fake kernel, eager kernel and the native library.

Contract (also in ``kernels/gated_delta_rule.h`` and ``runtime/README.md``)::

    qwen35::gated_delta_rule(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta,
                             Tensor(a!) state, bool use_qk_l2norm=True) -> Tensor

    q, k   [B, T, Hk, K]   float32 / float16 / bfloat16
    v      [B, T, Hv, V]   float32 / float16 / bfloat16; Hv a multiple of Hk, value head j
                           reads key head j // (Hv // Hk) (repeat_interleave, never tiled)
    g      [B, T, Hv]      log-decay (<= 0); exp(g) is applied inside the kernel
    beta   [B, T, Hv]      write strength (already sigmoid-ed)
    state  [B, Hv, K, V]   float32, contiguous, updated in place
    return [B, T, Hv, V]   dtype of v

Semantics: transformers' ``torch_recurrent_gated_delta_rule(q', k', v, g, beta,
initial_state=state, output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm)`` with q', k'
the head-repeated q, k: l2norm (``x * rsqrt(sum(x^2) + 1e-6)``) when asked, then q / sqrt(K);
accumulation and state in float32. T == 1 runs the fused decode step, T > 1 the chunked (WY) form.

The ``.out`` overload (``*, Tensor(b!) out``) is what ExecuTorch's ``ToOutVarPass`` maps the op to;
the native kernel registered for ExecuTorch is ``qwen35::gated_delta_rule.out``.

Both the eager torch kernel and the ExecuTorch kernel run the same C++ core
(``kernels/gated_delta_rule.cpp``); eager torch calls it through ctypes on contiguous tensors.
The library is built with CMake on first use into a cache directory keyed by a hash of the sources
(override with ``QWEN35_RUNTIME_BUILD_DIR``, or point ``QWEN35_RUNTIME_LIB`` at a prebuilt library).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

__all__ = [
    "OP_NAME",
    "ET_KERNEL_NAME",
    "GatedDeltaRuleArgumentError",
    "build_library",
    "library_path",
    "load_library",
    "is_loaded",
    "isa_name",
    "chunk_size",
    "set_chunk_size",
    "validate_args",
]

OP_NAME = "qwen35::gated_delta_rule"
ET_KERNEL_NAME = "qwen35::gated_delta_rule.out"
LIB_BASENAME = "libqwen35_ops"
_ABI_VERSION = 1

_SCHEMA = (
    "gated_delta_rule(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor(a!) state, "
    "bool use_qk_l2norm=True) -> Tensor"
)
_SCHEMA_OUT = (
    "gated_delta_rule.out(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor(a!) state, "
    "bool use_qk_l2norm=True, *, Tensor(b!) out) -> Tensor(b!)"
)

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_RUNTIME_DIR = Path(__file__).resolve().parent


class GatedDeltaRuleArgumentError(ValueError):
    """A bad argument to qwen35::gated_delta_rule; the message names the argument."""


# --------------------------------------------------------------------------------- validation --


def _fail(msg: str):
    raise GatedDeltaRuleArgumentError(f"{OP_NAME}: {msg}")


def validate_args(q, k, v, g, beta, state, out=None) -> tuple[int, int, int, int, int, int]:
    """Checks the contract; raises GatedDeltaRuleArgumentError naming the argument.

    Returns (B, T, Hk, Hv, K, V). Works on real, fake and meta tensors (no data access).
    """
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "state": state}
    if out is not None:
        named["out"] = out
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            _fail(f"argument '{name}' must be a Tensor, got {type(t).__name__}")
    for name in ("q", "k", "v", "g", "beta"):
        if named[name].dtype not in _DTYPE_CODES:
            _fail(f"argument '{name}' must be float32, float16 or bfloat16, got {named[name].dtype}")
    if state.dtype != torch.float32:
        _fail(f"argument 'state' must be float32, got {state.dtype}")
    if out is not None and out.dtype != v.dtype:
        _fail(f"argument 'out' must have v's dtype {v.dtype}, got {out.dtype}")
    for name, rank, layout in (
        ("q", 4, "[B, T, Hk, K]"),
        ("k", 4, "[B, T, Hk, K]"),
        ("v", 4, "[B, T, Hv, V]"),
        ("g", 3, "[B, T, Hv]"),
        ("beta", 3, "[B, T, Hv]"),
        ("state", 4, "[B, Hv, K, V]"),
    ):
        if named[name].dim() != rank:
            _fail(f"argument '{name}' must be {rank}D {layout}, got {named[name].dim()}D")
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    if tuple(k.shape) != tuple(q.shape):
        _fail(f"argument 'k' has shape {list(k.shape)}, must equal q's {list(q.shape)} [B, T, Hk, K]")
    if v.shape[0] != B or v.shape[1] != T:
        _fail(f"argument 'v' has shape {list(v.shape)}, its B, T must match q's ({B}, {T})")
    if Hv < 1 or V < 1 or Hv % Hk != 0:
        _fail(f"argument 'v' has Hv={Hv} value heads, must be a positive multiple of Hk={Hk}")
    for name in ("g", "beta"):
        if tuple(named[name].shape) != (B, T, Hv):
            _fail(f"argument '{name}' has shape {list(named[name].shape)}, must be [B, T, Hv] = {[B, T, Hv]}")
    if tuple(state.shape) != (B, Hv, K, V):
        _fail(f"argument 'state' has shape {list(state.shape)}, must be [B, Hv, K, V] = {[B, Hv, K, V]}")
    if out is not None and tuple(out.shape) != (B, T, Hv, V):
        _fail(f"argument 'out' has shape {list(out.shape)}, must be [B, T, Hv, V] = {[B, T, Hv, V]}")
    # state is updated in place, so it cannot be silently copied to a contiguous buffer.
    if not state.is_contiguous():
        _fail("argument 'state' must be contiguous")
    if out is not None and not out.is_contiguous():
        _fail("argument 'out' must be contiguous")
    for name, t in named.items():
        if t.device.type not in ("cpu", "meta"):
            _fail(f"argument '{name}' must be on the CPU, got {t.device}")
    if out is not None and out.device.type == "cpu" and state.device.type == "cpu":
        try:  # fake/functional tensors have no data pointer; real ones are checked here
            s0, o0 = state.data_ptr(), out.data_ptr()
        except RuntimeError:
            s0 = o0 = None
        if s0 is not None and o0 is not None:
            s1 = s0 + state.numel() * state.element_size()
            o1 = o0 + out.numel() * out.element_size()
            if out.numel() and state.numel() and o0 < s1 and s0 < o1:
                _fail("argument 'out' must not alias 'state'")
    return B, T, Hk, Hv, K, V


# ----------------------------------------------------------------------------- native library --

_lock = threading.RLock()
_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None


def _lib_filename() -> str:
    return LIB_BASENAME + (".dylib" if sys.platform == "darwin" else ".so")


def _source_files() -> list[Path]:
    files = [_RUNTIME_DIR / "CMakeLists.txt"]
    for pattern in ("kernels/*.h", "kernels/*.cpp", "cmake/*.cmake"):
        files.extend(sorted(_RUNTIME_DIR.glob(pattern)))
    return [f for f in files if f.is_file()]


def _executorch_root() -> Path:
    import executorch

    return Path(list(executorch.__path__)[0])


def _source_hash() -> str:
    h = hashlib.sha256()
    for f in _source_files():
        h.update(f.relative_to(_RUNTIME_DIR).as_posix().encode())
        h.update(f.read_bytes())
    try:
        from executorch import version as et_version

        h.update(str(getattr(et_version, "__version__", "")).encode())
    except Exception:  # pragma: no cover - version module is optional
        pass
    h.update(str(_executorch_root()).encode())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Where the library is built: $QWEN35_RUNTIME_BUILD_DIR, else a user cache dir keyed by source hash."""
    env = os.environ.get("QWEN35_RUNTIME_BUILD_DIR")
    if env:
        return Path(env).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "qwen_mobile" / "runtime" / f"{platform.machine()}-{_source_hash()}"


def library_path() -> Path:
    """The library load_library() uses: $QWEN35_RUNTIME_LIB if set, else the one in build_dir()."""
    env = os.environ.get("QWEN35_RUNTIME_LIB")
    if env:
        return Path(env).expanduser().resolve()
    return build_dir() / _lib_filename()


def _find_cmake() -> str:
    """The CMake pinned by our dependencies (PyPI `cmake` >= 3.28), before whatever is on PATH.

    The venv's bin/ is not on PATH when its python is run directly (`.venv/bin/python -m pytest`), and the system
    CMake (Debian 12: 3.25) is too old for executorch's imported targets.
    """
    candidates = []
    try:
        import cmake  # the PyPI package

        candidates.append(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        pass
    if shutil.which("cmake"):
        candidates.append(Path(shutil.which("cmake")))
    for exe in candidates:
        if exe.exists() and _cmake_version(exe) >= (3, 28):
            return str(exe)
    found = ", ".join(f"{c} ({'.'.join(map(str, _cmake_version(c)))})" for c in candidates if c.exists())
    raise RuntimeError(f"{OP_NAME}: cannot build the native library: need CMake >= 3.28 "
                       f"(pip install 'cmake>=3.28'); found: {found or 'none'}")


def _cmake_version(exe: Path) -> tuple[int, ...]:
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30).stdout
        return tuple(int(x) for x in out.split()[2].split(".")[:2])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return (0,)


def _find_compiler() -> str:
    cxx = os.environ.get("CXX")
    if cxx:
        if shutil.which(cxx) is None:
            raise RuntimeError(f"{OP_NAME}: CXX={cxx!r} is set but not found on PATH")
        return shutil.which(cxx)
    for name in ("c++", "g++", "clang++"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise RuntimeError(
        f"{OP_NAME}: cannot build the native library: no C++17 compiler found (looked for $CXX, c++, g++, "
        "clang++). Install one (e.g. `apt-get install g++`) or set QWEN35_RUNTIME_LIB to a prebuilt "
        f"{_lib_filename()}."
    )


def build_library(force: bool = False, verbose: bool = False) -> Path:
    """Configures and builds the native library with CMake (Release) into build_dir(); returns its path.

    A file lock serialises concurrent builds (several pytest workers, several engineers).
    """
    out_dir = build_dir()
    lib = out_dir / _lib_filename()
    if lib.exists() and not force:
        return lib
    cmake = _find_cmake()
    cxx = _find_compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(out_dir / ".build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if lib.exists() and not force:
                return lib
            et_cmake = _executorch_root() / "lib" / "cmake" / "executorch"
            configure = [
                cmake,
                "-S",
                str(_RUNTIME_DIR),
                "-B",
                str(out_dir),
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_CXX_COMPILER={cxx}",
                f"-Dexecutorch_DIR={et_cmake}",
            ]
            build = [cmake, "--build", str(out_dir), "--config", "Release", "-j", str(max(1, os.cpu_count() or 1))]
            for cmd in (configure, build):
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if verbose:
                    print(proc.stdout)
                if proc.returncode != 0:
                    tail = "\n".join(proc.stdout.splitlines()[-40:])
                    raise RuntimeError(f"{OP_NAME}: building the native library failed: {' '.join(cmd)}\n{tail}")
            if not lib.exists():
                raise RuntimeError(f"{OP_NAME}: the build finished but {lib} is missing")
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return lib


def _et_operator_registered() -> bool:
    """True if some library already registered the ExecuTorch kernel in this process."""
    if "executorch.extension.pybindings.portable_lib" not in sys.modules and not any(
        m.startswith("executorch.extension.pybindings") for m in sys.modules
    ):
        return False
    try:
        from executorch.extension.pybindings.portable_lib import _get_operator_names

        return ET_KERNEL_NAME in set(_get_operator_names())
    except Exception:
        return False


def load_library() -> ctypes.CDLL:
    """Builds (if missing) and loads the native library once per process; returns its ctypes handle.

    Loading registers the ExecuTorch kernel ``qwen35::gated_delta_rule.out`` (RTLD_GLOBAL, into the
    registry in libexecutorch.so that the pybindings use) and gives the eager op its C entry point.
    Idempotent: registering an ExecuTorch kernel twice aborts the process, so a second call returns
    the same handle, and the C++ side also refuses to re-register.
    """
    global _lib, _lib_path
    with _lock:
        if _lib is not None:
            return _lib
        path = library_path()
        if not path.exists():
            if os.environ.get("QWEN35_RUNTIME_LIB"):
                raise RuntimeError(f"{OP_NAME}: QWEN35_RUNTIME_LIB={path} does not exist")
            path = build_library()
        already = _et_operator_registered()
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        lib.qwen35_gated_delta_rule.restype = ctypes.c_int
        lib.qwen35_gated_delta_rule.argtypes = [ctypes.c_void_p] * 7 + [
            ctypes.POINTER(ctypes.c_int32),
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.qwen35_isa_name.restype = ctypes.c_char_p
        lib.qwen35_chunk_size.restype = ctypes.c_int64
        lib.qwen35_set_chunk_size.argtypes = [ctypes.c_int64]
        lib.qwen35_set_isa.argtypes = [ctypes.c_int32]
        lib.qwen35_abi_version.restype = ctypes.c_int32
        lib.qwen35_et_kernel_registered.restype = ctypes.c_int32
        lib.qwen35_xnnpack_set_weight_cache.argtypes = [ctypes.c_int]
        lib.qwen35_xnnpack_set_weight_cache.restype = ctypes.c_int
        if lib.qwen35_abi_version() != _ABI_VERSION:
            raise RuntimeError(f"{OP_NAME}: {path} has ABI {lib.qwen35_abi_version()}, expected {_ABI_VERSION}")
        if not lib.qwen35_et_kernel_registered() and not already:
            # Another copy registered first (a different path loaded by someone else). The kernel is
            # still available to ExecuTorch; say so rather than abort.
            import warnings

            warnings.warn(f"{ET_KERNEL_NAME} was already registered by another library; using that registration")
        _lib, _lib_path = lib, path
        return lib


def is_loaded() -> bool:
    return _lib is not None


def loaded_library_path() -> Path | None:
    return _lib_path


def isa_name() -> str:
    """SIMD path the kernel takes on this CPU: 'avx2+fma', 'neon' or 'portable'."""
    return load_library().qwen35_isa_name().decode()


def chunk_size() -> int:
    return int(load_library().qwen35_chunk_size())


def set_chunk_size(c: int) -> None:
    """Chunk size for T > 1 (benchmarking); 0 restores the tuned default, 1 forces the recurrence."""
    load_library().qwen35_set_chunk_size(int(c))


def last_run_slabs() -> int:
    """How many parallel slabs the last gated_delta_rule call was split into (1: the calling thread alone). Tests."""
    fn = load_library().qwen35_last_run_slabs  # bound here, so a library built before this hook still loads
    fn.restype = ctypes.c_int64
    return int(fn())


def force_portable(flag: bool) -> None:
    """Use the portable/NEON path even where AVX2 is available (tests and benchmarks)."""
    load_library().qwen35_set_isa(1 if flag else 0)


# ------------------------------------------------------------------------------ torch library --


def _run_native(q, k, v, g, beta, state, out, use_qk_l2norm: bool) -> None:
    B, T, Hk, Hv, K, V = validate_args(q, k, v, g, beta, state, out)
    if out.numel() == 0:
        return
    lib = load_library()
    q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
    dtypes = (ctypes.c_int32 * 6)(*(_DTYPE_CODES[t.dtype] for t in (q, k, v, g, beta, out)))
    dims = (ctypes.c_int64 * 6)(B, T, Hk, Hv, K, V)
    err = ctypes.create_string_buffer(512)
    rc = lib.qwen35_gated_delta_rule(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        g.data_ptr(),
        beta.data_ptr(),
        state.data_ptr(),
        out.data_ptr(),
        dtypes,
        dims,
        int(bool(use_qk_l2norm)),
        torch.get_num_threads(),
        err,
        len(err),
    )
    if rc != 0:
        raise GatedDeltaRuleArgumentError(err.value.decode(errors="replace"))


def _define_ops() -> None:
    ns = getattr(torch.ops, "qwen35")
    if hasattr(ns, "gated_delta_rule"):
        return  # defined already (e.g. this file imported under a second module name)
    lib = torch.library.Library("qwen35", "DEF")
    lib.define(_SCHEMA)
    lib.define(_SCHEMA_OUT)

    def gated_delta_rule_eager(q, k, v, g, beta, state, use_qk_l2norm=True):
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        _run_native(q, k, v, g, beta, state, out, use_qk_l2norm)
        return out

    def gated_delta_rule_out_eager(q, k, v, g, beta, state, use_qk_l2norm=True, *, out):
        _run_native(q, k, v, g, beta, state, out, use_qk_l2norm)
        return out

    lib.impl("gated_delta_rule", gated_delta_rule_eager, "CompositeExplicitAutograd")
    lib.impl("gated_delta_rule.out", gated_delta_rule_out_eager, "CompositeExplicitAutograd")

    @torch.library.register_fake("qwen35::gated_delta_rule", lib=lib)
    def _(q, k, v, g, beta, state, use_qk_l2norm=True):
        validate_args(q, k, v, g, beta, state)
        return v.new_empty(v.shape)

    @torch.library.register_fake("qwen35::gated_delta_rule.out", lib=lib)
    def _(q, k, v, g, beta, state, use_qk_l2norm=True, *, out):
        validate_args(q, k, v, g, beta, state, out)
        return out

    globals()["_torch_library"] = lib  # keep the registrations alive


_define_ops()


def enable_xnnpack_weight_cache() -> None:
    """Turn on XNNPACK's packed-weight cache for every program loaded from now on in this process.

    Our programs' `forward` and `decode_token` call the same XNNPACK-lowered linears; without the cache each method
    packs its own copy of every weight at load (kernels/xnnpack_options.cpp). Raises if the XNNPACK backend refuses.
    """
    import executorch.runtime  # noqa: F401  loads the pybindings, whose libraries register the XNNPACK backend

    err = load_library().qwen35_xnnpack_set_weight_cache(1)
    if err:
        raise RuntimeError(f"XnnpackBackend refused weight_cache_enabled (ExecuTorch error {err}); is the XNNPACK "
                           "backend linked into these pybindings?")
