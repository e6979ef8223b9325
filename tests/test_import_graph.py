"""The three packages form layers, not a knot: export -> runtime and models; models -> runtime (for our ops);
runtime -> nothing of ours. The runtime reads bundles on phones' behalf and must never need the exporter or the model.

Every import statement counts, at module level or inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"models": ROOT / "models", "export": ROOT / "export", "runtime": ROOT / "runtime"}
ALLOWED = {"export": {"models", "runtime"}, "models": {"runtime"}, "runtime": set()}


def _imported_packages(path: Path, package: str) -> set[str]:
    """The qwen_mobile packages `path` imports (absolute `qwen_mobile.X` and relative imports that climb out)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    depth_in_package = len(path.relative_to(PACKAGES[package]).parts) - 1  # 0 for a module at the package root
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level > depth_in_package + 1:
                raise AssertionError(f"{path}: relative import climbs out of qwen_mobile.{package}")
        for name in names:
            parts = name.split(".")
            if parts[0] == "qwen_mobile" and len(parts) > 1 and parts[1] in PACKAGES:
                found.add(parts[1])
    found.discard(package)
    return found


def import_graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files that import it."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if any(part.startswith(".") or part in ("build", "__pycache__") for part in path.relative_to(folder).parts):
                continue
            for target in _imported_packages(path, package):
                graph[package].setdefault(target, []).append(str(path.relative_to(ROOT)))
    return graph


def test_the_packages_import_each_other_only_downwards():
    graph = import_graph()
    wrong = {f"{a} -> {b}": files for a, edges in graph.items() for b, files in edges.items() if b not in ALLOWED[a]}
    assert not wrong, f"imports against the layering {ALLOWED}: {wrong}"


def test_the_allowed_edges_have_no_cycle():
    # A cheap guard on ALLOWED itself: someone widening it must not create a loop.
    seen, stack = set(), []

    def visit(node):
        assert node not in stack, f"cycle: {' -> '.join(stack + [node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in ALLOWED[node]:
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in ALLOWED:
        visit(node)


def test_importing_the_runtime_loads_neither_the_exporter_nor_the_model():
    code = ("import sys, qwen_mobile.runtime, qwen_mobile.runtime.bundle, qwen_mobile.runtime.session, "
            "qwen_mobile.runtime.contract; "
            "print(sorted(m for m in sys.modules if m.startswith(('qwen_mobile.export', 'qwen_mobile.models'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
