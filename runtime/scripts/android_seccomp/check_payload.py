#!/usr/bin/env python3
"""Checks of the Android native payload (runtime/scripts/package_android.sh), used by check_android_native.sh.

    python check_payload.py elf LIB_DIR
        every lib*.so: no text relocations, a non-executable GNU_STACK, every PT_LOAD aligned to >= 16 KB (16 KB-page
        devices, Android 15+) with offset and address congruent modulo 16 KB
    python check_payload.py syscalls STRACE_LOG [--allowlists DIR] [--min-api 23] [--max-api 35] [--json OUT]
        every syscall a `qemu-aarch64 -strace` log shows against the app seccomp allowlist of each API level
        (allowlist_api<N>.txt; below API 26 Android has no app seccomp filter). Exit 1 when any level is violated.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
PT_LOAD, PT_DYNAMIC, PT_GNU_STACK = 1, 2, 0x6474E551
PF_X = 1
DT_NULL, DT_TEXTREL, DT_FLAGS = 0, 22, 30
DF_TEXTREL = 0x4
PAGE_16K = 16384
FIRST_SECCOMP_API = 26  # Android 8.0: app processes run under the seccomp filter


def elf_problems(path: Path) -> list[str]:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return ["not a little-endian ELF64 file"]
    if struct.unpack_from("<H", data, 0x12)[0] != 183:
        return ["not an aarch64 (EM_AARCH64) file"]
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    problems, stack, dynamic = [], None, None
    for i in range(phnum):
        p_type, flags, offset, vaddr, _pa, filesz, _memsz, align = struct.unpack_from("<IIQQQQQQ", data,
                                                                                     phoff + i * phentsize)
        if p_type == PT_LOAD:
            if align < PAGE_16K:
                problems.append(f"PT_LOAD at {vaddr:#x} aligned to {align:#x} < 16 KB")
            elif (vaddr - offset) % PAGE_16K:
                problems.append(f"PT_LOAD at {vaddr:#x}: address and file offset differ modulo 16 KB")
        elif p_type == PT_GNU_STACK:
            stack = flags
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if stack is None:
        problems.append("no PT_GNU_STACK (the stack would default to executable)")
    elif stack & PF_X:
        problems.append("executable stack (PT_GNU_STACK has PF_X)")
    if dynamic:
        for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == DT_NULL:
                break
            if tag == DT_TEXTREL or (tag == DT_FLAGS and val & DF_TEXTREL):
                problems.append("text relocations (DT_TEXTREL)")
    return problems


def check_elf(lib_dir: Path) -> int:
    files = sorted(lib_dir.glob("*.so"))
    if not files:
        print(f"check_payload: {lib_dir}: no .so files", file=sys.stderr)
        return 1
    bad = 0
    for f in files:
        problems = elf_problems(f)
        bad += bool(problems)
        print(f"elf {f.name}: " + ("; ".join(problems) + " FAIL" if problems else "ok"))
    print(f"elf: {len(files) - bad}/{len(files)} files pass (no TEXTREL, non-executable stack, LOAD >= 16 KB)")
    return 1 if bad else 0


def arm64_syscall_numbers() -> dict[str, int]:
    out = subprocess.run(["aarch64-linux-gnu-gcc", "-E", "-dM", "-x", "c", "-"], input="#include <asm/unistd.h>\n",
                         capture_output=True, text=True, check=True).stdout
    macros = dict(re.findall(r"^#define (\w+) (\S+)$", out, re.M))

    def value(name, depth=0):
        v = macros.get(name)
        if v is None or depth > 5:
            return None
        return int(v) if v.isdigit() else value(v, depth + 1)

    return {m[len("__NR_"):]: n for m in macros if m.startswith("__NR_") and (n := value(m)) is not None}


def read_allowlist(path: Path) -> set[int]:
    return {int(line.split()[0]) for line in path.read_text().splitlines() if line and not line.startswith("#")}


def strace_syscalls(log: Path, nrs: dict[str, int]) -> Counter:
    """Syscall numbers a qemu -strace log shows (a multi-threaded run interleaves lines: only call starts count)."""
    calls: Counter = Counter()
    unmapped = set()
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^\d+ (?:Unknown syscall (\d+)|(\w+)\()", line)
        if not m:
            continue
        if m.group(1):
            calls[int(m.group(1))] += 1
        elif m.group(2) in nrs:
            calls[nrs[m.group(2)]] += 1
        else:
            unmapped.add(m.group(2))
    if unmapped:
        raise SystemExit(f"check_payload: {log}: syscall names without an aarch64 number: {sorted(unmapped)}")
    return calls


def check_syscalls(a) -> int:
    nrs = arm64_syscall_numbers()
    names = {v: k for k, v in nrs.items()}
    calls = strace_syscalls(Path(a.log), nrs)
    if not calls:
        print(f"check_payload: {a.log}: no syscalls in the log; was it written by qemu -strace?", file=sys.stderr)
        return 1
    report = {"syscalls": {names.get(n, str(n)): c for n, c in sorted(calls.items())}, "api": {}}
    failed = []
    for api in range(a.min_api, a.max_api + 1):
        if api < FIRST_SECCOMP_API:
            report["api"][api] = {"filter": False, "violations": {}}
            print(f"API {api}: no app seccomp filter before Android 8.0 (API 26): ok")
            continue
        path = Path(a.allowlists) / f"allowlist_api{api}.txt"
        if not path.is_file():
            raise SystemExit(f"check_payload: {path}: no allowlist for API {api}")
        allowed = read_allowlist(path)
        bad = {names.get(n, str(n)) + f" ({n})": c for n, c in sorted(calls.items()) if n not in allowed}
        report["api"][api] = {"filter": True, "violations": bad}
        if bad:
            failed.append(api)
        print(f"API {api}: " + ("FAIL, outside the app allowlist: " + ", ".join(f"{k} x{v}" for k, v in bad.items())
                                if bad else f"ok ({len(calls)} distinct syscalls, all allowed)"))
    report["failed_api_levels"] = failed
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    print("syscalls: " + ("FAIL on API " + ", ".join(map(str, failed)) if failed else
                          f"every call allowed on API {a.min_api}..{a.max_api}"))
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("elf")
    e.add_argument("lib_dir", type=Path)
    s = sub.add_parser("syscalls")
    s.add_argument("log")
    s.add_argument("--allowlists", default=str(HERE))
    s.add_argument("--min-api", type=int, default=23)
    s.add_argument("--max-api", type=int, default=35)
    s.add_argument("--json")
    a = p.parse_args(argv)
    return check_elf(a.lib_dir) if a.cmd == "elf" else check_syscalls(a)


if __name__ == "__main__":
    sys.exit(main())
