"""Syntax-check Swift sources with tree-sitter-swift: the app's SwiftUI views and device tests cannot be compiled on
Linux (no SwiftUI, no XCTest metrics), so at least their syntax is checked here, with every other Swift file too.

    python check_swift_syntax.py FILE_OR_DIR ...

Prints one line per ERROR or MISSING node (path:line:column) and exits 1 if there is any.
"""

from __future__ import annotations

import sys
from pathlib import Path


def swift_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.swift") if ".build" not in f.parts)
        elif p.suffix == ".swift":
            files.append(p)
        else:
            raise SystemExit(f"check_swift_syntax.py: {p}: not a .swift file or a folder")
    return files


def problems(tree) -> list[tuple[int, int, str]]:
    found = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error:
            found.append((node.start_point[0] + 1, node.start_point[1] + 1, f"syntax error near {node.text[:40]!r}"))
        elif node.is_missing:
            found.append((node.start_point[0] + 1, node.start_point[1] + 1, f"missing {node.type!r}"))
        if node.has_error:
            stack.extend(node.children)
    return sorted(found)


def main(argv: list[str]) -> int:
    import tree_sitter
    import tree_sitter_swift

    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
    files = swift_files(argv)
    if not files:
        print("check_swift_syntax.py: no Swift files given", file=sys.stderr)
        return 2
    bad = 0
    for f in files:
        for line, col, what in problems(parser.parse(f.read_bytes())):
            print(f"{f}:{line}:{col}: {what}")
            bad += 1
    print(f"tree-sitter-swift: {len(files)} files, {bad} syntax problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
