"""Count what issue 32 counts in the code, so a reviewer can rerun the numbers.

    python benchmarks/structure_counts.py [--list]

- **task-name branches outside task classes**: comparisons of a task's name with a literal
  (``== "intensity"``, ``!= "occurrence"``, ``in ("occurrence", ...)``) and identity tests
  against a task object (``is OCCURRENCE``) in ``featbench/``, ``extract/``, ``classify/``,
  outside the task modules themselves (``classify/task.py``, ``classify/intensity_task.py``);
- **wide functions**: functions (and methods) with 10 or more parameters, every kind counted
  (``self``, positional, keyword-only, ``*args``, ``**kwargs``);
- **long functions**: functions of 70-79 lines (just under tests/test_function_length.py's 80).

``--list`` prints each place. Plain text search and ``ast``: no import of the package.
"""

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featbench", "extract", "classify")
TASK_MODULES = {"classify/task.py", "classify/intensity_task.py"}
#: a task's name compared with a literal, or a task object's identity tested
BRANCH = re.compile(r"""(==|!=)\s*["'](intensity|occurrence)["']"""
                    r"""|\bin\s*\(\s*["'](occurrence|intensity)["']"""
                    r"""|\bis\s+(not\s+)?(OCCURRENCE|INTENSITY|EXPRESSION)\b""")


def files():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def task_branches():
    out = []
    for path in files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in TASK_MODULES:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if BRANCH.search(code):
                out.append(f"{rel}:{i}: {line.strip()}")
    return out


def functions():
    for path in files():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield rel, node


def wide_functions(limit=10):
    out = []
    for rel, node in functions():
        a = node.args
        n = len(a.posonlyargs + a.args + a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
        if n >= limit:
            out.append(f"{rel}:{node.lineno}: {node.name} ({n} parameters)")
    return out


def long_functions(low=70, high=79):
    out = []
    for rel, node in functions():
        n = node.end_lineno - node.lineno + 1
        if low <= n <= high:
            out.append(f"{rel}:{node.lineno}: {node.name} ({n} lines)")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print each place counted")
    args = p.parse_args(argv)
    for title, found in (("task-name branches outside task classes", task_branches()),
                         ("functions with >= 10 parameters", wide_functions()),
                         ("functions of 70-79 lines", long_functions())):
        files_n = len({f.split(":")[0] for f in found})
        print(f"{title}: {len(found)} in {files_n} files")
        if args.list:
            for f in found:
                print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
