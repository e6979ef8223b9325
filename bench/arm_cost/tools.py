"""Everything the ARM cost measurement runs, built or fetched once and cached outside the repository.

Cache layout (default ~/.cache/qwen_mobile/arm_cost, `--cache` or QWEN_ARM_COST_CACHE):
  plugin/libcount_insns-<sha>.so       the counting TCG plugin (bench/arm_cost/count_insns.c), host gcc
  download/, src/                      the llama-cpp-python sdist and its vendored llama.cpp
  build/llama-<ver>-<profile>/         the llama.cpp cross build tree (the first profile's; reconfigured per profile)
  bin/llama-{bench,quantize}-<ver>-<profile>   static aarch64 binaries
  qwen-bench/build, qwen-bench/package our runner for aarch64 (runtime/), packaged with its loader and libraries
  checkpoints/<preset>, bundles/<preset>-<recipe>, gguf/<preset>/   the weights both peers run
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PLUGIN_SOURCE = HERE / "count_insns.c"
LLAMA_CPP_PYTHON = "0.3.36"  # the version bench/peers/llamacpp.py documents for the host peer
SYSROOT = Path("/usr/aarch64-linux-gnu")
TOOLCHAIN = ROOT / "runtime" / "cmake" / "aarch64-linux-gnu.cmake"
APT_PACKAGES = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "qemu-aarch64": "qemu-user", "gcc": "gcc"}
QEMU = "/usr/bin/qemu-aarch64"  # Debian's dynamically linked qemu-user: qemu-user-static refuses -plugin


@dataclass(frozen=True)
class Profile:
    name: str
    cpu: str  # qemu -cpu
    march: str  # llama.cpp's GGML_CPU_ARM_ARCH
    about: str


PROFILES = {
    "a76": Profile("a76", "cortex-a76", "armv8.2-a+dotprod+fp16",
                   "Cortex-A76: Armv8.2 + dotprod + fp16 (mid and older flagship phone cores)"),
    "v86": Profile("v86", "max,sve=off,sme=off", "armv8.6-a+dotprod+fp16+i8mm+bf16",
                   "qemu 'max' with SVE and SME off: Armv8.6+ with i8mm, bf16, dotprod, fp16"),
}


def default_cache() -> Path:
    return Path(os.environ.get("QWEN_ARM_COST_CACHE", Path.home() / ".cache" / "qwen_mobile" / "arm_cost"))


def log(msg: str) -> None:
    print(f"[arm_cost] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], *, log_path: Path | None = None, nice: int = 0, **kw) -> None:
    cmd = [str(c) for c in cmd]
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
        if proc.returncode:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}\n(log: {log_path})")
    else:
        subprocess.run(cmd, check=True, **kw)


class ToolsMissing(RuntimeError):
    """The aarch64 cross compiler or qemu-user is absent and cannot be installed here (not root, no apt)."""


def ensure_system_tools(install: bool = True) -> None:
    """g++-aarch64-linux-gnu and qemu-user (dynamic qemu-aarch64), installed with apt-get when missing."""
    apt_install(sorted({pkg for exe, pkg in APT_PACKAGES.items() if not shutil.which(exe)}
                       | (set() if Path(QEMU).exists() else {"qemu-user"})), install)


def apt_install(missing: list[str], install: bool = True) -> None:
    """apt-get install the Debian packages `missing` (none: nothing to do); ToolsMissing where that cannot run."""
    if not missing:
        return
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ToolsMissing(f"missing {' '.join(missing)}; install them (apt-get install {' '.join(missing)}) "
                           "or run as root")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True,
                   stdout=subprocess.DEVNULL, env=env)


def build_plugin(cache: Path) -> Path:
    """The counting plugin, keyed by its source's hash (a changed counter never reuses an old build)."""
    digest = hashlib.sha256(PLUGIN_SOURCE.read_bytes()).hexdigest()[:12]
    out = cache / "plugin" / f"libcount_insns-{digest}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".partial")
        _run(["gcc", "-O2", "-fPIC", "-shared", "-Wall", "-Werror", PLUGIN_SOURCE, "-o", tmp])
        tmp.rename(out)
    return out


def llama_source(cache: Path, python: str = sys.executable) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist (pip download --no-binary), extracted once."""
    src = cache / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").exists():
        return src
    dl = cache / "download"
    sdist = dl / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        log(f"pip download llama-cpp-python=={LLAMA_CPP_PYTHON} (sdist)")
        _run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", dl])
    tmp = cache / "src.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp, filter="data")
    (cache / "src").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(src.parents[1], ignore_errors=True)
    (tmp / src.parents[1].name).rename(src.parents[1])
    shutil.rmtree(tmp, ignore_errors=True)
    return src


def _cmake() -> str:
    sys.path.insert(0, str(ROOT))
    from qwen_mobile.runtime.library import _find_cmake

    return _find_cmake()


LLAMA_TARGETS = ("llama-bench", "llama-quantize")


def build_llama(cache: Path, profile: Profile, target: str = "llama-bench", jobs: int = 2) -> Path:
    """Static aarch64 llama.cpp tools (llama-bench, llama-quantize) for one -march profile; returns `target`'s path.

    One build tree per llama.cpp version: only ggml's CPU backend depends on -march, so the first profile builds
    everything (~12 min on 2 idle cores) and another one reconfigures the same tree and rebuilds just that backend."""
    out = cache / "bin" / f"{target}-{LLAMA_CPP_PYTHON}-{profile.name}"
    if out.exists():
        return out
    src = llama_source(cache)
    own = cache / "build" / f"llama-{LLAMA_CPP_PYTHON}-{profile.name}"
    trees = sorted(p for p in (cache / "build").glob(f"llama-{LLAMA_CPP_PYTHON}-*") if (p / "CMakeCache.txt").exists())
    build = own if own.exists() or not trees else trees[0]
    cmake = _cmake()
    log(f"building {', '.join(LLAMA_TARGETS)} for {profile.march} in {build} (log build.log there)")
    gen = ["-G", "Ninja"] if shutil.which("ninja") and not build.exists() else []
    _run([cmake, "-S", src, "-B", build, *gen, f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", "-DCMAKE_BUILD_TYPE=Release",
          "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={profile.march}", "-DGGML_OPENMP=OFF",
          "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_EXE_LINKER_FLAGS=-static", "-DLLAMA_CURL=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
          "-DLLAMA_BUILD_TOOLS=ON", "-DGGML_LLAMAFILE=ON"], log_path=build / "configure.log")
    _run([cmake, "--build", build, "--target", *LLAMA_TARGETS, "-j", str(jobs)], log_path=build / "build.log",
         nice=10)
    # The tree now holds this profile's CPU backend: copy every tool out before another profile reconfigures it.
    out.parent.mkdir(parents=True, exist_ok=True)
    for t in LLAMA_TARGETS:
        dst = cache / "bin" / f"{t}-{LLAMA_CPP_PYTHON}-{profile.name}"
        tmp = dst.with_name(dst.name + ".partial")
        shutil.copy2(build / "bin" / t, tmp)
        tmp.rename(dst)
    return out


def executorch_aarch64(python: str = sys.executable) -> Path:
    """executorch/lib of the aarch64 wheel of the installed version (the cache check_arm64.sh uses)."""
    from importlib.metadata import version

    ver = version("executorch")
    cache = Path(os.environ.get("QWEN_ARM64_WHEEL_CACHE", Path.home() / ".cache/qwen_mobile/executorch-aarch64"))
    wheel_dir = cache / ver
    if not (wheel_dir / "executorch/lib/cmake/executorch/executorch-config.cmake").exists():
        dl = cache / "download"
        log(f"pip download executorch=={ver} (aarch64 wheel)")
        _run([python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--platform",
              "manylinux_2_28_aarch64", "--python-version", "3.11", "-d", dl, f"executorch=={ver}"])
        wheels = glob.glob(str(dl / f"executorch-{ver}-*manylinux*aarch64.whl"))
        if not wheels:
            raise RuntimeError(f"no aarch64 wheel for executorch {ver} in {dl}")
        tmp = Path(str(wheel_dir) + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        keep = ("executorch/include/", "executorch/lib/", "executorch/share/")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(tmp, [n for n in z.namelist() if n.startswith(keep)])
        shutil.rmtree(wheel_dir, ignore_errors=True)
        tmp.rename(wheel_dir)
    return wheel_dir / "executorch" / "lib"


def build_qwen_bench(cache: Path) -> Path:
    """Our runner for aarch64 from the working tree (incremental, so a kernel edit is always measured), packaged
    with its loader and libraries (runtime/scripts/package_arm64_glibc.sh). Returns the package folder."""
    sys.path.insert(0, str(ROOT))
    from qwen_mobile.runtime import native

    lib = executorch_aarch64()
    build = cache / "qwen-bench" / "build"
    log("building qwen-bench for aarch64 (incremental)")
    native.build_runner(build, lib / "cmake" / "executorch", TOOLCHAIN)
    pkg = cache / "qwen-bench" / "package"
    _run([ROOT / "runtime/scripts/package_arm64_glibc.sh", build, lib, pkg], log_path=cache / "qwen-bench/package.log")
    return pkg


def ensure_bundle(cache: Path, preset: str, recipe: str = "xnnpack-8da4w", max_seq_len: int = 1024) -> Path:
    """Our bundle of the preset's random checkpoint (bench/peers/random_checkpoint.py, seed 0, bf16), reused."""
    sys.path.insert(0, str(ROOT))
    from bench.peers.random_checkpoint import ensure_random_checkpoint

    ckpt = ensure_random_checkpoint(preset, cache / "checkpoints" / preset)
    out = cache / "bundles" / f"{preset}-{recipe}"
    if (out / "manifest.json").exists():
        return out
    log(f"exporting {preset} {recipe} (minutes)")
    qm = Path(sys.executable).parent / "qwen-mobile"
    # Random weights: the quality gate (greedy tokens vs eager) is meaningless for them, as bench_export.py says.
    _run([qm, "export", ckpt, "--preset", recipe, "--max-seq-len", max_seq_len, "--quality-gate", "off", "--out", out, "--force",
          "--no-progress"], log_path=cache / "bundles" / f"{preset}-{recipe}.log", nice=10)
    return out


def ensure_gguf(cache: Path, preset: str, ftype: str = "Q4_0") -> Path:
    """A GGUF of the same checkpoint: llama.cpp's own converter (bench/peers/_llamacpp_worker.py convert, from the
    sdist) to bf16, then llama-quantize (the aarch64 build, run under qemu without the plugin) to ftype."""
    sys.path.insert(0, str(ROOT))
    from bench.peers.random_checkpoint import ensure_random_checkpoint

    ckpt = ensure_random_checkpoint(preset, cache / "checkpoints" / preset)
    work = cache / "gguf" / preset
    out = work / f"model-{ftype.lower()}.gguf"
    if out.exists():
        return out
    work.mkdir(parents=True, exist_ok=True)
    bf16 = work / "model-bf16.gguf"
    if not bf16.exists():
        log(f"converting {preset} to GGUF bf16")
        _run([sys.executable, ROOT / "bench/peers/_llamacpp_worker.py", "convert", "--converter-dir",
              llama_source(cache), "--hf", ckpt, "--out", work / "model-bf16.partial.gguf", "--outtype", "bf16"],
             log_path=work / "convert.log", nice=10)
        (work / "model-bf16.partial.gguf").rename(bf16)
    quantize = build_llama(cache, PROFILES["a76"], "llama-quantize")
    log(f"quantizing to {ftype} (llama-quantize under qemu)")
    tmp = work / f"model-{ftype.lower()}.partial.gguf"
    _run([QEMU, "-cpu", "cortex-a76", quantize, bf16, tmp, ftype, "2"], log_path=work / "quantize.log", nice=10)
    tmp.rename(out)
    return out
