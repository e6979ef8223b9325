#!/usr/bin/env python3
"""Rename shared-library names inside aarch64 ELF files in place: DT_SONAME, DT_NEEDED and the symbol-version
records (which name files by the same .dynstr strings), without moving a byte.

    python rename_needed.py OLD=NEW [OLD=NEW ...] -- FILE...

Each NEW must be exactly as long as OLD (package_android.sh's libc.so.6 -> libc-6.so keeps the length), so the string
is overwritten where it stands. patchelf 0.14 instead appends a grown .dynstr in a new segment, and glibc's libc
patched that way crashes at start-up under qemu (measured), hence this tool. A name that occurs in a file's .dynstr
other than as a whole string (e.g. as the tail of a longer one) is an error, not a silent partial rename.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

DT_NULL, DT_STRTAB, DT_STRSZ = 0, 5, 10
PT_LOAD, PT_DYNAMIC = 1, 2


def dynstr_range(data: bytes) -> tuple[int, int]:
    """(file offset, size) of the dynamic string table, found through PT_DYNAMIC like the loader does."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _f, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise ValueError("no PT_DYNAMIC (a static file?)")
    strtab = strsz = None
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == DT_NULL:
            break
        if tag == DT_STRTAB:
            strtab = val
        elif tag == DT_STRSZ:
            strsz = val
    for vaddr, offset, size in loads:
        if strtab is not None and vaddr <= strtab < vaddr + size:
            return strtab - vaddr + offset, strsz
    raise ValueError("DT_STRTAB is in no loaded segment")


def rename(path: Path, renames: dict[bytes, bytes]) -> list[str]:
    data = bytearray(path.read_bytes())
    start, size = dynstr_range(bytes(data))
    table = bytes(data[start:start + size])
    done = []
    for old, new in renames.items():
        pos = table.find(old)
        while pos >= 0:
            whole = (pos == 0 or table[pos - 1] == 0) and table[pos + len(old)] == 0
            if not whole:
                raise ValueError(f"{path}: '{old.decode()}' occurs inside another .dynstr string at {pos}")
            data[start + pos:start + pos + len(old)] = new
            done.append(f"{old.decode()}->{new.decode()}")
            pos = table.find(old, pos + 1)
    if done:
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.chmod(path.stat().st_mode)
        tmp.replace(path)
    return done


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    renames = {}
    for spec in argv[:cut]:
        old, _, new = spec.partition("=")
        if not old or len(old) != len(new):
            sys.exit(f"rename_needed: {spec!r}: NEW must be as long as OLD ({len(old)} characters)")
        renames[old.encode()] = new.encode()
    for f in argv[cut + 1:]:
        rename(Path(f), renames)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
