#!/usr/bin/env python3
"""Derive the Android app seccomp allowlist for arm64, per API level, from AOSP bionic's syscall lists (data only).

    python derive_allowlists.py BIONIC_GIT_DIR OUT_DIR

BIONIC_GIT_DIR is a git directory of https://android.googlesource.com/platform/bionic (or its GitHub mirror
aosp-mirror/platform_bionic) holding the release tags below. For each API level the app (zygote-spawned process)
filter allows, on arm64, every syscall of the listed files whose arch list covers arm64 ("all", "lp64", "arm64"),
files in `add` adding and files in `remove` removing, as bionic's libc/Android.bp feeds them to
libc/tools/genseccomp.py for the `app` policy (Android 8.0/8.1: one policy from SYSCALLS + WHITELIST - BLACKLIST).
Names become numbers through the aarch64 kernel headers (`aarch64-linux-gnu-gcc -E -dM` of <asm/unistd.h>).

Each release's first tag (rN_1) is used: later quarterly releases only ever added syscalls (clone3 in Android 14 QPR),
so the lists are the strictest a device of that level runs. Below API 26 there is no app seccomp filter.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RELEASES = {  # API level: (tag, files added, files removed)
    26: ("android-8.0.0_r1", ["SYSCALLS.TXT", "SECCOMP_WHITELIST.TXT"], ["SECCOMP_BLACKLIST.TXT"]),
    27: ("android-8.1.0_r1", ["SYSCALLS.TXT", "SECCOMP_WHITELIST.TXT"], ["SECCOMP_BLACKLIST.TXT"]),
}
for api, tag in ((28, "android-9.0.0_r1"), (29, "android-10.0.0_r1"), (30, "android-11.0.0_r1")):
    RELEASES[api] = (tag, ["SYSCALLS.TXT", "SECCOMP_WHITELIST_COMMON.TXT", "SECCOMP_WHITELIST_APP.TXT"],
                     ["SECCOMP_BLACKLIST_COMMON.TXT", "SECCOMP_BLACKLIST_APP.TXT"])
for api, tag in ((31, "android-12.0.0_r1"), (32, "android-12.1.0_r1"), (33, "android-13.0.0_r1"),
                 (34, "android-14.0.0_r1"), (35, "android-15.0.0_r1")):
    RELEASES[api] = (tag, ["SYSCALLS.TXT", "SECCOMP_ALLOWLIST_COMMON.TXT", "SECCOMP_ALLOWLIST_APP.TXT"],
                     ["SECCOMP_BLOCKLIST_COMMON.TXT", "SECCOMP_BLOCKLIST_APP.TXT"])


def arm64_syscall_numbers() -> dict[str, int]:
    out = subprocess.run(["aarch64-linux-gnu-gcc", "-E", "-dM", "-x", "c", "-"], input="#include <asm/unistd.h>\n",
                         capture_output=True, text=True, check=True).stdout
    macros = dict(re.findall(r"^#define (\w+) (\S+)$", out, re.M))

    def value(name: str, depth: int = 0):
        v = macros.get(name)
        if v is None or depth > 5:
            return None
        return int(v) if v.isdigit() else value(v, depth + 1)  # __NR_newfstatat -> __NR3264_fstatat -> 79

    nrs = {}
    for macro in macros:
        if macro.startswith("__NR_") and (nr := value(macro)) is not None:
            nrs[macro[len("__NR_"):]] = nr
    return nrs


def syscalls_for_arm64(text: str, source: str) -> set[str]:
    """Syscall names of a bionic syscall list whose arch list covers arm64."""
    names = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        open_at = line.find("(")
        if open_at < 0:
            raise ValueError(f"{source}:{n}: no parameter list: {raw!r}")
        depth, close_at = 0, -1
        for i in range(open_at, len(line)):
            depth += {"(": 1, ")": -1}.get(line[i], 0)
            if depth == 0:
                close_at = i
                break
        archs = {a.strip() for a in line[close_at + 1:].replace(",", " ").split()}
        if not archs & {"all", "lp64", "arm64"}:
            continue
        spec = line[:open_at].split()[-1]  # func_name[|aliases][:syscall_name[:socketcall_id]]
        parts = spec.split(":")
        names.add(parts[1] if len(parts) > 1 else parts[0].split("|")[0])
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit(__doc__)
    git_dir, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    nrs = arm64_syscall_numbers()
    for api, (tag, add, remove) in sorted(RELEASES.items()):
        commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", f"{tag}^{{commit}}"], capture_output=True,
                                text=True, check=True).stdout.strip()

        def read(name: str) -> set[str]:
            text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{commit}:libc/{name}"],
                                  capture_output=True, text=True, check=True).stdout
            return syscalls_for_arm64(text, f"{tag}:libc/{name}")

        allowed = set().union(*(read(f) for f in add)) - set().union(*(read(f) for f in remove))
        unknown = sorted(n for n in allowed if n not in nrs)
        if unknown:
            raise SystemExit(f"{tag}: no arm64 number for {unknown}")
        rows = sorted((nrs[n], n) for n in allowed)
        lines = [f"# Android app (zygote-spawned) seccomp allowlist, arm64, API {api}",
                 f"# source: AOSP platform/bionic {tag} (commit {commit}), libc/: "
                 + " + ".join(add) + " - " + " - ".join(remove),
                 "# derived by runtime/scripts/android_seccomp/derive_allowlists.py; numbers from the aarch64 "
                 "<asm/unistd.h>",
                 "# nr name"]
        lines += [f"{nr} {name}" for nr, name in rows]
        (out_dir / f"allowlist_api{api}.txt").write_text("\n".join(lines) + "\n")
        print(f"API {api}: {tag} {commit[:12]}: {len(rows)} syscalls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
