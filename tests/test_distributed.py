"""torchrun extraction: shards per rank, joined by a virtual dataset, equal to one process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
pytest.importorskip("torch")

from extract.distributed import shard_path, shard_slice  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(ws, *args, nproc=2):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(nproc), "-m", "featbench", "--workspace", str(ws.root),
           "extract", "--quiet", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_ws(tmp_path_factory):
    """A 3-subject synthetic set, extracted in one process (reference) and aligned in a copy."""
    from extract.extractor import extract_features
    from featbench.core.datasets import load_dataset
    from featbench.core.synth import generate_dataset

    ref = Workspace(tmp_path_factory.mktemp("ref"))
    generate_dataset(ref.data_dir("synth"), subjects=3, frames=8, progress=False)
    table = load_dataset("synth", workspace=ref, progress=False)
    extract_features(table, ref, "hog", region="all", progress=False)
    extract_features(table, ref, "dlib_face", weights="random:0", progress=False)
    dist = Workspace(tmp_path_factory.mktemp("dist"))
    shutil.copytree(ref.data_dir("synth"), dist.data_dir("synth"))
    return ref, dist


def _same(a, b, *, exact=True):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert np.array_equal(fa["frames"][:], fb["frames"][:])
        assert sorted(fa) == sorted(fb)
        for reg in fa:
            if reg == "frames":
                continue
            x, y = fa[reg]["codes"][:], fb[reg]["codes"][:]
            assert fb[reg]["codes"].is_virtual
            assert np.array_equal(x, y) if exact else np.allclose(x, y, rtol=1e-5, atol=1e-6), reg
        for k in ("model", "layer", "weights", "input_size", "dims", "dtype", "frames_sha256"):
            assert fa.attrs[k] == fb.attrs[k], k


@pytest.mark.slow
def test_two_ranks_equal_one_process_row_for_row_and_a_killed_rank_resumes_alone(two_ws):
    ref, dist = two_ws
    r = _torchrun(dist, "--model", "hog", "--region", "all", "--batch-size", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "[full,upper,middle,lower]" in lines[0], r.stdout
    out = dist.features_path("synth", "hog")
    _same(ref.features_path("synth", "hog"), out)
    shards = [shard_path(out, k, 2) for k in range(2)]
    with h5py.File(out, "r") as f:
        n = f["frames"].shape[0]
        assert f.attrs["shards"] == "hog.shards/rank000-of-002.h5,hog.shards/rank001-of-002.h5"
    for k, s in enumerate(shards):
        part = shard_slice(n, k, 2)
        with h5py.File(s, "r") as f:
            assert f["frames"].shape[0] == part.stop - part.start > 0

    # rank 1 "killed" part way: its shard holds its first rows only, the joined file is gone
    with h5py.File(shards[1], "r+") as f:
        for reg in ("full", "upper"):
            f[reg].attrs["rows_done"] = 2
            f[reg]["codes"][2:] = 0
    out.unlink()
    before = shards[0].stat().st_mtime_ns
    r = _torchrun(dist, "--model", "hog", "--region", "all", "--batch-size", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert shards[0].stat().st_mtime_ns == before  # the finished shard was not touched
    part = shard_slice(n, 1, 2)
    redone = 2 * (part.stop - part.start - 2)
    assert f"{redone} computed" in r.stdout, r.stdout
    _same(ref.features_path("synth", "hog"), out)

    # a torch network across ranks; then a shard of other weights is refused, not mixed
    r = _torchrun(dist, "--model", "dlib_face", "--weights", "random:0", "--batch-size", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    _same(ref.features_path("synth", "dlib_face"), dist.features_path("synth", "dlib_face"),
          exact=False)
    dist.features_path("synth", "dlib_face").unlink()
    r = _torchrun(dist, "--model", "dlib_face", "--weights", "random:1")
    assert r.returncode != 0
    assert "made with weights random:0, asked for random:1" in r.stderr
