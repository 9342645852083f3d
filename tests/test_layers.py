"""The layers of DESIGN.md, checked by walking every import of the code (module-level and local).

core (``featbench/core``, and the ``featbench`` package itself for its version) -> extract ->
classify -> apply (``featbench/apply``) -> app (``featbench/app``): a module may import its own
layer and the ones below it, never one above, and no set of modules may import each other in a
circle (a cycle hidden in function-local imports counts: it is what made the old layout hard to
follow).

A registry's lazy ``"module:attr"`` entry (:class:`featbench.core.registry.Registry`, e.g.
``"classify.lstm:KIND"`` in classify/kinds.py) is an import made later: it counts as an import of
that module for the layers (an entry pointing up is caught), not for cycles (the registered
module registers itself with the registry it names, by design).
"""

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featbench", "extract", "classify")
#: module prefix -> layer, the longest prefix wins
LAYERS = {"featbench": 0, "featbench.core": 0, "extract": 1, "classify": 2, "featbench.apply": 3,
          "featbench.app": 4, "featbench.__main__": 4}
#: import cycles not yet untied; the list only shrinks
KNOWN_CYCLES = []


def layer_of(module):
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len,
               default=None)
    return None if best is None else LAYERS[best]


def module_files(root):
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def import_graph(root, *, entries=False):
    """Return ``{module: {imported project module: first line}}`` over every import statement
    (with ``entries``: also every ``"module:attr"`` string naming a project module)."""
    mods = module_files(root)
    graph = collections.defaultdict(dict)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if entries and isinstance(node, ast.Constant) and isinstance(node.value, str):
                module, colon, attr = node.value.partition(":")
                if colon and attr.isidentifier() and module in mods and module != name:
                    graph[name].setdefault(module, node.lineno)
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t in mods and t != name and t != "featbench":
                    graph[name].setdefault(t, node.lineno)
    return mods, graph


def upward_arrows(graph):
    return [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)}), line {line}"
            for a, targets in graph.items() for b, line in targets.items()
            if layer_of(b) > layer_of(a)]


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    for start in list(graph):
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_every_module_has_a_layer():
    mods, _ = import_graph(ROOT)
    assert mods and all(layer_of(m) is not None for m in mods)


def test_imports_point_down_only():
    _, graph = import_graph(ROOT, entries=True)  # registry entries are imports too
    assert upward_arrows(graph) == []


def test_registry_entries_are_seen_as_imports():
    _, graph = import_graph(ROOT, entries=True)
    assert "classify.netkinds" in graph["classify.kinds"]  # "classify.netkinds:LSTM", a lazy entry
    assert "classify.lstm" in graph["classify.netkinds"]  # lazy("classify.lstm:lstm_method")
    assert "classify.netkinds" not in import_graph(ROOT)[1].get("classify.kinds", {})
    assert "classify.lstm" not in import_graph(ROOT)[1].get("classify.netkinds", {})


#: what trains and only trains: the inference side (predict, export, the model check, loading a
#: run of any kind) must not import it
TRAINING = ("classify.learn", "classify.training", "classify.finetune", "classify.transfer",
            "classify.lstm", "classify.codemethods", "classify.driver", "classify.run",
            "classify.plan", "classify.scale")


def test_the_inference_side_imports_no_training_module():
    """Every module the apply layer and the kinds' loading reach through imports (module-level
    and local; a kind's lazily named training parts are not imports) is outside training."""
    mods, graph = import_graph(ROOT)
    seen, todo = set(), [m for m in mods if m.startswith("featbench.apply.")]
    todo += ["classify.kinds", "classify.basekinds", "classify.netkinds", "classify.loaders",
             "classify.modelcheck"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    assert "classify.loaders" in seen and "classify.ft_net" not in seen  # a unit's net: lazily
    inside = tuple(t + "." for t in TRAINING)  # a package's modules (lstm_net is not lstm's)
    assert sorted(m for m in seen if m in TRAINING or m.startswith(inside)) == []


def test_no_import_cycles():
    _, graph = import_graph(ROOT)
    found = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_known_cycles_are_still_there():
    """A cycle untied leaves KNOWN_CYCLES, so that it cannot come back unnoticed."""
    _, graph = import_graph(ROOT)
    now = cycles(graph)
    assert [c for c in KNOWN_CYCLES if c not in now] == []


@pytest.fixture
def toy_tree(tmp_path):
    def write(rel, text):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in ("featbench", "featbench/core", "featbench/app", "extract", "classify"):
        write(f"{pkg}/__init__.py", "")
    return tmp_path, write


def test_the_walk_catches_an_upward_local_import_and_a_cycle(toy_tree):
    root, write = toy_tree
    write("featbench/core/a.py", "def f():\n    from featbench.app import cli\n")
    write("featbench/app/cli.py", "from featbench.core import a\n")
    write("extract/x.py", "from extract import y\n")
    write("extract/y.py", "def g():\n    from . import x\n")
    _, graph = import_graph(root)
    assert ("featbench.core.a (layer 0) imports featbench.app.cli (layer 4), line 2"
            in upward_arrows(graph))
    assert {"extract.x", "extract.y"} in cycles(graph)
    assert {"featbench.core.a", "featbench.app.cli"} in cycles(graph)
