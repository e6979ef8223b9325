"""The Android app's native payload (runtime/scripts/package_android.sh) and its checks
(runtime/scripts/check_android_native.sh): every file a lib*.so, the launch line the app uses, ELF properties, tokens
under qemu equal to Python's, and the seccomp allowlist check passing on the patched libraries and failing on the
unpatched ones. The allowlist data is checked against the facts in /work/shared/android-runtime-notes.md."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from qwen_mobile.runtime import native

SCRIPTS = native.RUNTIME_DIR / "scripts"
SECCOMP = SCRIPTS / "android_seccomp"
BUILD = Path(os.environ.get("QWEN_NATIVE_BUILD", native.RUNTIME_DIR / "build-native"))


def allowlist(api: int) -> dict[str, int]:
    rows = [line.split() for line in (SECCOMP / f"allowlist_api{api}.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    return {name: int(nr) for nr, name in rows}


def test_allowlists_name_their_source_and_hold_the_known_facts():
    for api in range(26, 36):
        text = (SECCOMP / f"allowlist_api{api}.txt").read_text()
        assert re.search(r"source: AOSP platform/bionic android-[0-9.]+_r1 \(commit [0-9a-f]{40}\)", text), api
        calls = allowlist(api)
        assert {"read", "write", "openat", "mmap", "futex", "clone"} <= set(calls), api
        # What kills an unmodified glibc in an app process (android-runtime-notes.md, "Seccomp").
        assert not {"set_robust_list", "rseq", "faccessat2"} & set(calls), api
        assert calls["openat"] == 56 and calls["futex"] == 98  # aarch64 numbers
        assert ("clone3" in calls) == (api >= 35)  # 14 QPR allows it; 14.0.0_r1 does not
        assert ("statx" in calls) == (api >= 30)
        assert ("epoll_pwait2" in calls) == (api >= 35)
    assert not (SECCOMP / "allowlist_api25.txt").exists()  # no app filter before Android 8.0


@pytest.fixture(scope="module")
def fp32(request) -> Path:
    """conftest's fp32 bundle, or an exported copy named by QWEN_NATIVE_TEST_FP32_BUNDLE (as in test_serve.py)."""
    given = os.environ.get("QWEN_NATIVE_TEST_FP32_BUNDLE")
    return Path(given) if given else request.getfixturevalue("fp32_bundle")


def _tools_or_skip():
    missing = [t for t in ("aarch64-linux-gnu-g++", "patchelf") if not shutil.which(t)]
    if not (shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")):
        missing.append("qemu-aarch64")
    if missing and os.geteuid() != 0:
        pytest.skip(f"aarch64 tools missing ({', '.join(missing)}) and not root, so the scripts cannot apt-get them; "
                    "CI installs them (runtime/scripts/check_arm64.sh, package_android.sh)")


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> Path:
    _tools_or_skip()
    out = tmp_path_factory.mktemp("android") / "arm64-v8a"
    proc = subprocess.run(["bash", str(SCRIPTS / "package_android.sh"), str(out)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_payload_is_lib_so_files_with_a_launch_line(payload):
    files = sorted(p.name for p in payload.iterdir())
    libs = [f for f in files if f != "launch.json"]
    assert all(re.fullmatch(r"lib[A-Za-z0-9_.-]+\.so", f) for f in libs), libs
    assert {"libqwen_bench.so", "libld-linux-aarch64.so", "libc-6.so", "libqwen35_ops.so",
            "libexecutorch.so"} <= set(libs)
    launch = json.loads((payload / "launch.json").read_text())
    assert launch["argv"] == ["{libdir}/libld-linux-aarch64.so", "--library-path", "{libdir}",
                              "{libdir}/libqwen_bench.so", "--serve", "--bundle", "{bundle}"]
    assert launch["env"] == {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    patched = {r["file"]: r["patched"] for r in launch["seccomp_patched"]}
    assert {"99", "293", "439"} <= set(patched["libc-6.so"]) and {"99", "293"} <= set(patched["libld-linux-aarch64.so"])
    assert set(launch["files"]) == set(libs)


def test_check_passes_patched_and_fails_unpatched(payload, fp32):
    """check_android_native.sh: ELF checks, the exact launch line under qemu with tokens equal to Python's, the
    syscall allowlist of API 23..35, and the unpatched payload failing that check on set_robust_list."""
    proc = subprocess.run(["bash", str(SCRIPTS / "check_android_native.sh"), str(payload), str(fp32)],
                          capture_output=True, text=True, timeout=3600)
    out = proc.stdout
    assert proc.returncode == 0 and "check_android_native: PASS" in out, out[-4000:] + proc.stderr[-3000:]
    assert "elf: 15/15 files pass" in out or re.search(r"elf: (\d+)/\1 files pass", out)
    assert out.count(" OK") >= 3  # greedy, sampled, turn 2 after save/load
    assert "syscalls: every call allowed on API 23..35" in out
    assert "unpatched payload fails the syscall check as it must: OK" in out
    unpatched = json.loads((BUILD / "check-android" / "syscalls-unpatched.json").read_text())
    assert unpatched["failed_api_levels"] == list(range(26, 36))
    assert all("set_robust_list (99)" in unpatched["api"][str(a)]["violations"] for a in range(26, 36))


def test_elf_check_fails_on_an_executable_stack(payload, tmp_path):
    """The ELF check can fail: flip PF_X on one library's PT_GNU_STACK."""
    import struct
    import sys

    bad = tmp_path / "lib"
    bad.mkdir()
    data = bytearray((payload / "libqwen35_ops.so").read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 0x6474E551:
            flags = struct.unpack_from("<I", data, phoff + i * phentsize + 4)[0]
            struct.pack_into("<I", data, phoff + i * phentsize + 4, flags | 1)
    (bad / "libqwen35_ops.so").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, str(SECCOMP / "check_payload.py"), "elf", str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "executable stack" in proc.stdout
