#!/usr/bin/env python3
"""Make the syscalls an Android app's seccomp filter kills on return -ENOSYS instead, in shipped aarch64 libraries.

    python patch_syscalls.py [--nr 99,293,435,439] [--require libc.so.6=99,293,435,439] [--json OUT] FILE...

Every `svc #0` whose syscall number register (x8) was last set by `mov x8|w8, #imm` with imm in --nr becomes
`movn x0, #37` (x0 = -38 = -ENOSYS), so the call never reaches the kernel and glibc takes the path it takes on a kernel
without that syscall: set_robust_list (99) and rseq (293) stay off, clone3 (435) falls back to clone, faccessat2
(439) to faccessat. Sites whose number comes from a register (glibc's generic syscall()) cannot be patched this way:
they are counted, and the qemu strace check (check_android_native.sh) is what proves no forbidden call remains.

Files are patched in place (callers work on copies). --require FILE=NRS fails unless each listed number had at least
one site in that file (a glibc whose code moved would otherwise ship unpatched without a word).
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

SVC0 = 0xD4000001
MOVN_X0_37 = 0x928004A0  # movn x0, #37  ->  x0 = ~37 = -38 = -ENOSYS
DEFAULT_NRS = (99, 293, 435, 439)
NAMES = {99: "set_robust_list", 293: "rseq", 435: "clone3", 439: "faccessat2"}
OBJDUMP = "aarch64-linux-gnu-objdump"

INSN = re.compile(r"^\s*([0-9a-f]+):\s+([0-9a-f]{8})\s+(\S+)\s*(.*)$")
# Instructions whose first operand is read, not written: a store, compare, test or branch on x8 does not set it.
READS_FIRST = re.compile(r"^(st|cmp|cmn|tst|cb|tb|b\.|b$|bl|br|blr|ret|prfm|dmb|dsb|isb|hint|nop|svc)")


def load_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(vaddr, offset, filesz) of every PT_LOAD of a little-endian ELF64."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segs.append((p_vaddr, p_offset, p_filesz))
    return segs


def file_offset(segs, vaddr: int) -> int:
    for v, off, size in segs:
        if v <= vaddr < v + size:
            return vaddr - v + off
    raise ValueError(f"address {vaddr:#x} is in no loaded segment")


def syscall_sites(path: Path) -> list[tuple[int, int | None]]:
    """(address, number or None when it is not a constant) of every `svc #0`."""
    out = subprocess.run([OBJDUMP, "-d", str(path)], capture_output=True,
                         text=True, check=True).stdout
    sites, window = [], []
    for line in out.splitlines():
        if line.endswith(">:"):  # a new function: nothing before it sets x8 for this one
            window = []
            continue
        m = INSN.match(line)
        if not m:
            continue
        addr, word, mnemonic, operands = int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4)
        if word == SVC0:
            nr = None
            for w, mn, ops in reversed(window[-32:]):
                if (w & 0x7FE0001F) == 0x52800008:  # movz w8|x8, #imm16 (hw = 0)
                    nr = (w >> 5) & 0xFFFF
                    break
                first = ops.split(",")[0].strip()
                if first in ("x8", "w8") and not READS_FIRST.match(mn):
                    break  # set some other way: not a constant we can trust
                if mn in ("ret", "b", "br") or mn.startswith("b."):
                    break  # another basic block
            sites.append((addr, nr))
        window.append((word, mnemonic, operands))
    return sites


def patch(path: Path, nrs: set[int]) -> dict:
    data = bytearray(path.read_bytes())
    segs = load_segments(bytes(data))
    report = {"file": path.name, "patched": {}, "non_constant_sites": 0}
    for addr, nr in syscall_sites(path):
        if nr is None:
            report["non_constant_sites"] += 1
            continue
        if nr not in nrs:
            continue
        off = file_offset(segs, addr)
        if struct.unpack_from("<I", data, off)[0] != SVC0:
            raise ValueError(f"{path}: {addr:#x} is not `svc #0` in the file")
        struct.pack_into("<I", data, off, MOVN_X0_37)
        report["patched"].setdefault(str(nr), []).append(hex(addr))
    if report["patched"]:
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.chmod(path.stat().st_mode)
        tmp.replace(path)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nr", default=",".join(map(str, DEFAULT_NRS)), help="syscall numbers to disable (aarch64)")
    p.add_argument("--require", action="append", default=[], metavar="FILE=NRS")
    p.add_argument("--json", help="write the report there")
    p.add_argument("files", nargs="+", type=Path)
    a = p.parse_args(argv)
    nrs = {int(x) for x in a.nr.split(",")}
    reports = [patch(f, nrs) for f in a.files]
    status = 0
    for req in a.require:
        name, _, want = req.partition("=")
        rep = next((r for r in reports if r["file"] == name), None)
        missing = [int(n) for n in want.split(",") if rep is None or n not in rep["patched"]]
        if missing:
            print(f"patch_syscalls: {name}: no `svc #0` site found for " +
                  ", ".join(f"{n} ({NAMES.get(n, '?')})" for n in missing), file=sys.stderr)
            status = 1
    for r in reports:
        if r["patched"]:
            sites = ", ".join(f"{NAMES.get(int(n), n)} x{len(v)}" for n, v in sorted(r["patched"].items()))
            print(f"patch_syscalls: {r['file']}: {sites} -> -ENOSYS ({r['non_constant_sites']} non-constant sites)")
    if a.json:
        Path(a.json).write_text(json.dumps(reports, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
