"""Issue 10's rule, kept from now on: no function in featbench/, classify/ or extract/ reaches 80
lines (its docstring and body included; measured as /work/wt/longfn.py does, def to last line)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("featbench", "classify", "extract")
LIMIT = 80


def long_functions(root, packages=PACKAGES, limit=LIMIT):
    """Return ``(lines, "path:line", name)`` of every function or method of ``limit`` lines or more."""
    rows = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n >= limit:
                        rows.append((n, f"{path.relative_to(root)}:{node.lineno}", node.name))
    return sorted(rows, reverse=True)


def test_no_function_reaches_80_lines():
    found = long_functions(ROOT)
    assert not found, "split these by meaning (named steps with docstrings):\n" + "\n".join(
        f"  {n} lines  {where}  {name}" for n, where, name in found)


def test_the_walk_finds_a_long_function(tmp_path):
    # the measure itself: a function of 80 lines (def + 79) is caught, one of 79 is not, nested too
    pkg = tmp_path / "featbench"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    inner = "\n".join(f"        y{i} = {i}" for i in range(79))
    (pkg / "m.py").write_text(f"def long():\n{body}\n\n\ndef short():\n{body[:body.rindex(chr(10))]}\n\n\n"
                              f"class K:\n    def method(self):\n{inner}\n")
    found = long_functions(tmp_path, packages=("featbench",))
    assert sorted((name, n) for n, _, name in found) == [("long", 80), ("method", 80)]
    assert "featbench/m.py:1" in [where for _, where, _ in found]


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_are_walked(package):
    assert any((ROOT / package).rglob("*.py"))
