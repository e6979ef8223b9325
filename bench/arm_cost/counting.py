"""One counted run: a guest program under qemu-aarch64 with the counting plugin, and what its counts mean.

A run is made exact by fixing everything the guest sees: the CPU model, `env -i` (no environment at all), the same
empty working directory, the same paths. Its counts include start-up and loading; `Counts.per_token` takes the
difference of two runs that differ only in their token count, so those cancel.

Where the instructions go: the plugin reports executions per translation block, keyed by guest address; qemu's
`-d page,strace` log gives the guest's load addresses (the loader qemu started, then every file the guest mmapped),
and the ELF files' program headers and symbol tables (aarch64-linux-gnu-nm) turn an address into a function.
"""

from __future__ import annotations

import bisect
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tools import QEMU

CLASSES = ("simd_fp", "ls_simd", "ls_gp", "dp_imm", "dp_reg", "branch", "sve", "other", "dot", "mmla")
TOTALS = CLASSES + ("insns", "bytes_loaded", "bytes_stored")
PROFILE_KEYS = ("insns", "simd_fp", "dot_mmla", "bytes_loaded", "bytes_stored")


@dataclass
class Counts:
    totals: dict[str, int]
    # (vaddr, n_insns, execs, loaded, stored, simd_fp, dot, mmla) of every translation that ran
    blocks: list[tuple[int, ...]]
    vcpus: int
    mappings: list["Mapping"] = field(default_factory=list)
    wall_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Counts":
        lines = text.splitlines()
        if not lines or lines[0] != "qemu_arm_cost 1":
            raise ValueError("not a count_insns output (first line is not 'qemu_arm_cost 1')")
        totals, blocks, vcpus = {}, [], 0
        for ln in lines[1:]:
            f = ln.split()
            if f[0] == "total":
                totals[f[1]] = int(f[2])
            elif f[0] == "vcpus":
                vcpus = int(f[1])
            elif f[0] == "tb":
                cls_counts = dict(zip(CLASSES, map(int, f[6:])))
                blocks.append((int(f[1], 16), int(f[2]), int(f[3]), int(f[4]), int(f[5]),
                               cls_counts["simd_fp"], cls_counts["dot"], cls_counts["mmla"]))
        missing = set(TOTALS) - set(totals)
        if missing:
            raise ValueError(f"count_insns output lacks totals {sorted(missing)}")
        return cls(totals, blocks, vcpus)

    def summary(self) -> dict[str, int]:
        """The reported groups: all, SIMD/FP data processing, loads and stores, everything else, bytes."""
        t = self.totals
        ls = t["ls_simd"] + t["ls_gp"]
        return {"insns": t["insns"], "simd_fp": t["simd_fp"], "load_store": ls,
                "other": t["insns"] - t["simd_fp"] - ls, "ls_simd": t["ls_simd"], "dot": t["dot"],
                "mmla": t["mmla"], "sve": t["sve"], "bytes_loaded": t["bytes_loaded"],
                "bytes_stored": t["bytes_stored"]}


def per_token(short: Counts, long: Counts, tokens: int) -> dict[str, float]:
    """(long - short) / tokens for every reported group."""
    a, b = short.summary(), long.summary()
    return {k: (b[k] - a[k]) / tokens for k in a}


def guest_root(where: Path) -> Path:
    """A prefix for qemu's -L that shows the guest one online CPU (and nothing else: qemu only redirects paths that
    exist under it). Thread pools size themselves from /sys/devices/system/cpu/online (ExecuTorch's did: 2 on this
    host) and a worker that starts and spins before the program shrinks the pool to --threads 1 races the inline
    counters, which made repeated runs differ by ~10^4 instructions."""
    root = where / "guest-root"
    cpu = root / "sys/devices/system/cpu"
    if not (cpu / "online").exists():
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("online", "possible", "present"):
            (cpu / name).write_text("0\n")
    return root


def run_counted(argv: list[str], *, cpu: str, plugin: Path, workdir: Path, out_prefix: Path,
                symbolize: bool = False, timeout: float | None = None) -> Counts:
    """argv (guest program first) under the plugin, in an emptied workdir with an empty environment."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    counts_path, log_path = Path(f"{out_prefix}.counts"), Path(f"{out_prefix}.qemu.log")
    for p in (counts_path, log_path):
        p.unlink(missing_ok=True)
    cmd = ["env", "-i", QEMU, "-cpu", cpu, "-L", str(guest_root(out_prefix.parent)), "-plugin",
           f"{plugin},out={counts_path}"]
    if symbolize:
        cmd += ["-d", "page,strace", "-D", str(log_path)]
    cmd += [str(a) for a in argv]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    wall = time.monotonic() - t0
    Path(f"{out_prefix}.stdout").write_text(proc.stdout)
    Path(f"{out_prefix}.stderr").write_text(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"guest run failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    if not counts_path.exists():
        raise RuntimeError(f"the plugin wrote no counts ({counts_path}): {' '.join(cmd)}")
    counts = Counts.parse(counts_path.read_text())
    counts.wall_s = wall
    # counts.vcpus > 1 is not an error by itself: a thread pool sized for the host may start a worker before the
    # program resizes it to one thread. Blocked threads run no guest code; only threads running at the same time
    # would make the inline counters race, and two invocations then disagree (the determinism test's check).
    if symbolize:
        counts.mappings = guest_mappings(log_path.read_text(errors="replace"), Path(argv[0]))
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Guest addresses -> ELF files -> functions


@dataclass
class Mapping:
    start: int
    end: int
    path: Path
    file_offset: int  # file offset at `start` (mmapped files)
    bias: int | None = None  # link address = guest address - bias (the program qemu itself loaded)


_OPENAT = re.compile(r'^\d+ openat\(AT_FDCWD,"([^"]+)",[^)]*\) = (\d+)$')
# With -d page, qemu prints the page table between an mmap's arguments and its " = result" line.
_MMAP_CALL = re.compile(r"^\d+ mmap\((0x[0-9a-f]+|NULL),(\d+),([A-Z_|]+),([A-Z_|]+),(-?\d+),(0x[0-9a-f]+|\d+)\)")
_RESULT = re.compile(r"(?:^|\)) = (0x[0-9a-f]+|-?\d+)")
_CLOSE = re.compile(r"^\d+ close\((\d+)\) = 0$")


def guest_mappings(log_text: str, program: Path) -> list[Mapping]:
    """File-backed executable mappings, from qemu's `-d page,strace` log, later mappings first.

    The program qemu loaded: `start_code` in the page log, minus the lowest executable PT_LOAD address of the ELF,
    is its load bias. Everything else (libraries the loader or dlopen mapped) comes from openat + mmap lines."""
    maps: list[Mapping] = []
    m = re.search(r"^start_code\s+0x([0-9a-f]+)$", log_text, re.M)
    if m:
        code = [s for s in elf_segments(program) if s.flags & 1]  # PF_X
        lo, hi = min(s.vaddr for s in code), max(s.vaddr + s.memsz for s in code)
        bias = int(m.group(1), 16) - lo
        maps.append(Mapping(bias + lo, bias + hi, program, 0, bias))
    fds: dict[int, str] = {}
    pending = None  # (length, prot, fd, offset) of an mmap whose result line has not come yet
    for ln in log_text.splitlines():
        if (o := _OPENAT.match(ln)):
            fds[int(o.group(2))] = o.group(1)
        elif (c := _CLOSE.match(ln)):
            fds.pop(int(c.group(1)), None)
        elif (mm := _MMAP_CALL.match(ln)):
            pending = (int(mm.group(2)), mm.group(3), int(mm.group(5)), int(mm.group(6), 0))
            ln = ln[mm.end():]
        if pending and (r := _RESULT.search(ln)):
            length, prot, fd, off = pending
            pending = None
            if fd >= 0 and fd in fds and "PROT_EXEC" in prot and r.group(1).startswith("0x"):
                start = int(r.group(1), 16)
                maps.append(Mapping(start, start + length, Path(fds[fd]), off))
    return maps[::-1]


@dataclass
class Segment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


def elf_segments(path: Path) -> list[Segment]:
    """PT_LOAD program headers of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    segs = []
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize)
        if p_type == 1:
            segs.append(Segment(p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
    return segs


class SymbolTable:
    """Function symbols of one ELF file (static and dynamic tables, demangled), looked up by link-time address."""

    def __init__(self, path: Path, nm: str = "aarch64-linux-gnu-nm"):
        self.path = path
        self.segments = elf_segments(path)
        syms: dict[int, tuple[int, str]] = {}
        for extra in ([], ["-D"]):
            proc = subprocess.run([nm, "-C", "-S", "--defined-only", *extra, str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
            for ln in proc.stdout.splitlines():
                parts = ln.split(" ", 3)
                if len(parts) == 4 and parts[2] in "TtWwi":
                    addr, size = int(parts[0], 16), int(parts[1], 16)
                    if addr not in syms or size > syms[addr][0]:
                        syms[addr] = (size, parts[3].split("@@")[0])
        self.addrs = sorted(syms)
        self.syms = [syms[a] for a in self.addrs]

    def vaddr_of_offset(self, off: int) -> int | None:
        for s in self.segments:
            if s.offset <= off < s.offset + s.filesz:
                return s.vaddr + off - s.offset
        return None

    def lookup(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i < 0:
            return None
        size, name = self.syms[i]
        if vaddr < self.addrs[i] + max(size, 1) or size == 0:
            return name
        return None


def function_profile(counts: Counts) -> dict[str, dict[str, int]]:
    """{"file: function": {PROFILE_KEYS}} of a symbolized run; a block is credited to the function it starts in."""
    tables: dict[Path, SymbolTable] = {}
    out: dict[str, dict[str, int]] = {}
    cache: dict[int, str] = {}
    for vaddr, n, execs, loaded, stored, simd, dot, mmla in counts.blocks:
        key = cache.get(vaddr)
        if key is None:
            key = "[unknown]"
            for mp in counts.mappings:
                if mp.start <= vaddr < mp.end:
                    tab = tables.get(mp.path) or tables.setdefault(mp.path, SymbolTable(mp.path))
                    link = vaddr - mp.bias if mp.bias is not None else \
                        tab.vaddr_of_offset(vaddr - mp.start + mp.file_offset)
                    name = tab.lookup(link) if link is not None else None
                    key = f"{mp.path.name}: {name or hex(link or 0)}" if name else f"{mp.path.name}: ?"
                    break
            cache[vaddr] = key
        rec = out.setdefault(key, dict.fromkeys(PROFILE_KEYS, 0))
        rec["insns"] += n * execs
        rec["simd_fp"] += simd * execs
        rec["dot_mmla"] += (dot + mmla) * execs
        rec["bytes_loaded"] += loaded
        rec["bytes_stored"] += stored
    return out


def profile_per_token(short: dict, long: dict, tokens: int) -> dict[str, dict[str, float]]:
    out = {}
    for key in set(short) | set(long):
        a, b = short.get(key, {}), long.get(key, {})
        d = {k: (b.get(k, 0) - a.get(k, 0)) / tokens for k in PROFILE_KEYS}
        if d["insns"] or d["bytes_loaded"] or d["bytes_stored"]:
            out[key] = d
    return out
