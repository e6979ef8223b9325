"""The native library ``libqwen35_ops``: where it is, how it is built, and loading it once per process.

One library holds every qwen35 kernel (``kernels/*.cpp``): the eager torch ops call it through ctypes, and loading it
registers the same kernels with ExecuTorch. Nothing here runs at import: ``load_library()`` builds (CMake, Release,
``find_package(executorch)`` from the wheel) and loads on the first call, which the first eager op call or the first
``.pte`` load makes. The build goes to a cache directory keyed by a hash of the sources (override with
``QWEN35_RUNTIME_BUILD_DIR``), or ``QWEN35_RUNTIME_LIB`` points at a prebuilt library (runtime/README.md,
"Build and load").
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

__all__ = ["LIB_BASENAME", "build_dir", "library_path", "build_library", "load_library",
           "is_loaded", "loaded_library_path"]

LIB_BASENAME = "libqwen35_ops"
# The kernel whose registration load_library() checks: the library registers all of ours together.
_PROBE_KERNEL = "qwen35::gated_delta_rule.out"
_ABI_VERSION = 1
_RUNTIME_DIR = Path(__file__).resolve().parent

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
    raise RuntimeError(f"{LIB_BASENAME}: cannot build the native library: need CMake >= 3.28 "
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
            raise RuntimeError(f"{LIB_BASENAME}: CXX={cxx!r} is set but not found on PATH")
        return shutil.which(cxx)
    for name in ("c++", "g++", "clang++"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise RuntimeError(
        f"{LIB_BASENAME}: cannot build the native library: no C++17 compiler found (looked for $CXX, c++, g++, "
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
                    raise RuntimeError(f"{LIB_BASENAME}: building the native library failed: {' '.join(cmd)}\n{tail}")
            if not lib.exists():
                raise RuntimeError(f"{LIB_BASENAME}: the build finished but {lib} is missing")
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

        return _PROBE_KERNEL in set(_get_operator_names())
    except Exception:
        return False


def load_library() -> ctypes.CDLL:
    """Builds (if missing) and loads the native library once per process; returns its ctypes handle.

    Loading registers our ExecuTorch kernels (``qwen35::gated_delta_rule.out``, ``linear_wq.out``, ...; RTLD_GLOBAL,
    into the registry in libexecutorch.so that the pybindings use) and gives the eager ops their C entry points. The
    eager ops call it on their first call; whoever loads a ``.pte`` that calls our kernels calls it before (program.py).
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
                raise RuntimeError(f"{LIB_BASENAME}: QWEN35_RUNTIME_LIB={path} does not exist")
            path = build_library()
        already = _et_operator_registered()
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        # Each op module binds the C entry points it calls (ops.py, wq.py, state_ops.py, xnnpack_options.py).
        lib.qwen35_abi_version.restype = ctypes.c_int32
        lib.qwen35_et_kernel_registered.restype = ctypes.c_int32
        if lib.qwen35_abi_version() != _ABI_VERSION:
            raise RuntimeError(f"{LIB_BASENAME}: {path} has ABI {lib.qwen35_abi_version()}, expected {_ABI_VERSION}")
        if not lib.qwen35_et_kernel_registered() and not already:
            # Another copy registered first (a different path loaded by someone else). The kernel is
            # still available to ExecuTorch; say so rather than abort.
            import warnings

            warnings.warn(f"{_PROBE_KERNEL} was already registered by another library; using that registration")
        _lib, _lib_path = lib, path
        return lib


def is_loaded() -> bool:
    return _lib is not None


def loaded_library_path() -> Path | None:
    return _lib_path
