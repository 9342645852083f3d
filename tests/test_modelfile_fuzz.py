"""Property-based fuzzing of the model-file reader, as safetensors itself is tested.

Real exports of every run kind (:mod:`model_zoo`: lda, svm, vote, lstm, ridge, svr, ft,
transfer, trained once per session) are damaged at random by Hypothesis: bytes flipped
(anywhere, or inside the header), the file cut, the safetensors header edited (a tensor's
dtype, shape or offsets), the manifest edited (a value replaced by a hostile one, a key
dropped, a group pointed at another's), each with or without its digests made to match
again. Whatever the damage, loading ends either in a model that loads AND scores faces through
predict's own encoders and scorer, or in ONE :class:`FeatbenchError` line that names the file
(exit status 2 at the CLI): never another exception, and never an allocation above a bound
(the address space is limited to what the process had plus :data:`BOUND` while a case runs,
so a request of terabytes fails the test; Python and numpy allocations are traced too).

Default: :data:`EXAMPLES` cases in process and :data:`CLI_EXAMPLES` through ``featbench
predict --model FILE`` (derandomized, so CI sees the same cases); ``-m slow`` runs many more.
"""

import json
import os
import resource
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import model_zoo as Z  # noqa: E402
from featbench.core.errors import FeatbenchError  # noqa: E402

#: address space one case may add to the process (a manifest that asked OpenCV for 3 TB fails)
BOUND = 1 << 30
#: Python and numpy bytes one case may allocate (tracemalloc's peak)
TRACED = 256 << 20
EXAMPLES, CLI_EXAMPLES = 150, 6
SLOW_EXAMPLES, SLOW_CLI_EXAMPLES = 3000, 60
REPO = Path(__file__).resolve().parents[1]
STATS = Counter()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return Z.zoo(tmp_path_factory)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if STATS:  # pytest -s shows it: how the cases ended, and the largest traced peak
        print("\nmodel-file fuzz:", ", ".join(f"{k} {v}" for k, v in sorted(STATS.items())))


# --- the damage ------------------------------------------------------------------------------------
#: values a careless or hostile edit puts in a manifest
HOSTILE = st.one_of(
    st.sampled_from(["AU01", "AU99", "", "../x", "/etc/passwd", "intensity", "occurrence", "vote",
                     "none", "median", "2", "x" * 300, 10 ** 6, 10 ** 12, 2 ** 63, -1, 0, 1, 2,
                     3.5, float("nan"), float("inf"), None, True, False, [], {}, ["AU01"],
                     ["AU01", "AU01"], [10 ** 9, 10 ** 9], {"AU01": "AU02"}, {"AU01": 0.5},
                     [{"run": "../.."}], {"prefix": "AU02/"}, "0" * 64]),
    st.integers(), st.floats(), st.text(max_size=12))
#: where edits matter most (half the manifest edits pick one of these; the rest any path)
KEY_PATHS = (("aus",), ("task",), ("kind",), ("format_version",), ("run",), ("folds",),
             ("weights",), ("preprocessing",), ("preprocessing", "alignment", "size"),
             ("preprocessing", "input_size"), ("preprocessing", "regions"),
             ("preprocessing", "calibrate"), ("preprocessing", "model"), ("settings",),
             ("settings", "units"), ("settings", "models"), ("tensors",), ("members",),
             ("carried",), ("training_data",))


def _paths(node, at=()):
    """Every path into a JSON value (dict keys and list indices), the value's own first."""
    yield at
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, at + (k,))


def _get(node, path):
    for k in path:
        node = node[k]
    return node


@st.composite
def manifest_edit(draw):
    """``edit(tensors, manifest)``: one value replaced or dropped, or one group's entry swapped."""
    how = draw(st.sampled_from(["replace", "drop", "swap"]))
    pick, value = draw(st.floats(0, 1, exclude_max=True)), draw(HOSTILE)
    key_path = draw(st.booleans())

    def edit(tensors, manifest):
        root = manifest
        if key_path:
            chosen = KEY_PATHS[int(pick * len(KEY_PATHS))]
            paths = [p for p in _paths(manifest) if p[:len(chosen)] == chosen] or [()]
        else:
            paths = list(_paths(manifest))
        path = paths[int(pick * len(paths))]
        if not path:
            return
        parent, key = _get(root, path[:-1]), path[-1]
        if how == "drop" and isinstance(parent, dict):
            del parent[key]
        elif how == "swap" and isinstance(parent, dict) and len(parent) > 1:
            other = list(parent)[(list(parent).index(key) + 1) % len(parent)]
            parent[key], parent[other] = parent[other], parent[key]
        else:
            parent[key] = value
    return edit


@st.composite
def header_edit(draw):
    """``edit(tensors, manifest)`` of one tensor's header entry: dtype, shape or bytes."""
    field, pick = draw(st.sampled_from(["dtype", "shape", "bytes"])), draw(st.floats(0, 1, exclude_max=True))
    dtype = draw(st.sampled_from(["F64", "F32", "F16", "I64", "I32", "I8", "U8", "BOOL", "BF16",
                                  "F8_E4M3", "", "f32"]))
    shape = draw(st.lists(st.one_of(st.integers(0, 20), st.sampled_from([10 ** 6, 10 ** 12, 2 ** 62])),
                          max_size=9))
    cut = draw(st.integers(-16, 16))

    def edit(tensors, manifest):
        if not tensors:
            return
        name = list(tensors)[int(pick * len(tensors))]
        t = tensors[name]
        if field == "dtype":
            t[0] = dtype
        elif field == "shape":
            t[1] = shape
        else:
            t[2] = t[2][:max(0, len(t[2]) + cut)] if cut < 0 else t[2] + bytes(cut)
    return edit


#: the families of damage; each family gets its own share of the cases
FAMILIES = ("flip", "flip-header", "cut", "header", "manifest", "manifest+flip")


@st.composite
def damage(draw, what):
    """``(kind, what, make(src, dst))``: one damaged copy of an export, of family ``what``."""
    kind = draw(st.sampled_from(Z.KINDS))
    flips = draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                          min_size=1, max_size=6))
    cut = draw(st.floats(0, 1, exclude_max=True))
    fix = draw(st.booleans())
    edit = draw(manifest_edit() if what.startswith("manifest") else header_edit())

    def make(src, dst):
        if what in ("header", "manifest", "manifest+flip"):
            Z.edited(src, dst, edit, fix_digests=fix)
            if what != "manifest+flip":
                return dst
            src = dst
        data = bytearray(src.read_bytes())
        n = 8 + int.from_bytes(data[:8], "little")
        span = n if what == "flip-header" else len(data)
        if what == "cut":
            dst.write_bytes(bytes(data[:int(cut * span)]))
            return dst
        for at, x in flips:
            data[int(at * span)] ^= x
        dst.write_bytes(bytes(data))
        return dst
    return kind, what, make


# --- one case ------------------------------------------------------------------------------------------
def _vm_size():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def outcome(path):
    """``"loaded"`` (and scored) or ``"refused"`` (one line naming the file); anything else fails."""
    from featbench.apply.runmodel import load_model_file

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + BOUND, hard))
    tracemalloc.start()
    try:
        try:
            scores, _ = Z.score(load_model_file(path))
            assert scores.shape[0] == 12
            result = "loaded"
        except FeatbenchError as exc:
            msg = str(exc)
            assert "\n" not in msg and str(path) in msg, f"not one line naming the file: {msg!r}"
            result = "refused"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert peak < TRACED, f"{peak} bytes allocated for a {path.stat().st_size}-byte file"
    STATS["max traced MB"] = max(STATS["max traced MB"], round(peak / 1e6))
    return result


def _fuzz(zoo, scratch, case):
    kind, what, make = case
    path = make(zoo["exports"][kind], scratch / f"{kind}-{what}.safetensors")
    STATS[f"{what} {outcome(path)}"] += 1


@pytest.mark.parametrize("what", FAMILIES)
@settings(max_examples=EXAMPLES // len(FAMILIES), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_damaged_export_loads_and_scores_or_is_one_line(zoo, scratch, what, data):
    _fuzz(zoo, scratch, data.draw(damage(what)))


@pytest.mark.slow
@pytest.mark.parametrize("what", FAMILIES)
@settings(max_examples=SLOW_EXAMPLES // len(FAMILIES), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_many_damaged_exports_load_and_score_or_are_one_line(zoo, scratch, what, data):
    _fuzz(zoo, scratch, data.draw(damage(what)))


# --- through the command line ----------------------------------------------------------------------
#: ``featbench predict IMAGE --model FILE --out CSV`` for each file given, in ONE process (the
#: interpreter and torch start once): one JSON line per file with its exit status and stderr;
#: the zoo's test-only backbone registered first (a transfer run's network)
_CLI = """
import contextlib, io, json, sys, traceback
import test_transfer
from featbench.app.cli import main
image, files = sys.argv[1], sys.argv[2:]
for i, path in enumerate(files):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(["predict", image, "--model", path, "--out", f"{path}.csv", "--quiet"])
    except BaseException:
        rc, err = -1, io.StringIO(traceback.format_exc())
    print(json.dumps({"path": path, "rc": rc, "err": err.getvalue()}), flush=True)
"""


def _cli(zoo, scratch, n, limit_gb=6, **kw):
    """``n`` damaged exports through ``featbench predict --model FILE`` in a process whose
    address space is limited to ``limit_gb``: each exits 0 (its CSV written) or 2 with one
    stderr line naming the file; never a traceback."""
    from PIL import Image

    files = []
    for family in FAMILIES:  # n / 6 cases of each family of damage

        @settings(max_examples=max(1, n // len(FAMILIES)), deadline=None, database=None, **kw,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=st.data())
        def collect(data):
            kind, what, make = data.draw(damage(family))
            files.append(make(zoo["exports"][kind],
                              scratch / f"cli-{len(files)}-{kind}-{what}.safetensors"))

        collect()
    image = scratch / "blank.png"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(image)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_gb << 30, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-c", _CLI, str(image), *map(str, files)],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=600)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(results) == len(files), proc.stderr[-3000:]
    for r in results:
        err = r["err"].strip().splitlines()
        assert r["rc"] in (0, 2) and "Traceback" not in r["err"], r
        assert r["rc"] == 0 or (len(err) == 1 and r["path"] in err[0]), r
        assert r["rc"] != 0 or Path(r["path"] + ".csv").exists(), r
        STATS[f"cli exit {r['rc']}"] += 1


def test_damaged_exports_through_predict_exit_0_or_2_with_one_line(zoo, scratch):
    _cli(zoo, scratch, CLI_EXAMPLES, derandomize=True)


@pytest.mark.slow
def test_many_damaged_exports_through_predict(zoo, scratch):
    _cli(zoo, scratch, SLOW_CLI_EXAMPLES)


def test_the_zoo_holds_every_kind_and_each_export_loads_and_scores(zoo):
    """The undamaged exports (and run folders) load and score: the fuzz starts from working files."""
    from featbench.core.modelfile import read_manifest

    assert set(zoo["exports"]) == set(Z.KINDS)
    for kind in Z.KINDS:
        for path in (zoo["exports"][kind], zoo["folders"][kind]):
            assert read_manifest(path)["kind"] == kind
            assert outcome(Path(path)) == "loaded", kind
