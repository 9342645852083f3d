"""Splits are subject-independent, reproducible and as documented."""

import numpy as np
import pytest

from featbench.core.errors import UsageError
from featbench.core.frames import FrameTable, build_frames
from featbench.core.splits import LITERATURE_FOLDS, PAPER_SPLIT, make_splits

DISFA_IDS = sorted(s for part in PAPER_SPLIT.values() for s in part)


def table_of(subjects, frames=2, split=None):
    rows = [{"subject": s, "video": s, "frame": i, "source": "", "source_index": i,
             "landmark_file": "", "split": (split or {}).get(s, ""), "AU01": i % 2}
            for s in subjects for i in range(frames)]
    return FrameTable("t", ".", ("AU01",), build_frames(rows, ("AU01",)))


def _disjoint(sp):
    parts = [set(sp.train), set(sp.validation), set(sp.test)]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_paper_split_on_disfa_ids_is_the_documented_one():
    (sp,) = make_splits(table_of(DISFA_IDS))
    assert (len(sp.train), len(sp.validation), len(sp.test)) == (12, 6, 9)
    assert sp.test == PAPER_SPLIT["test"] == LITERATURE_FOLDS[2]
    _disjoint(sp)
    assert set(sp.train) | set(sp.validation) | set(sp.test) == set(DISFA_IDS)


def test_paper_split_other_ids_is_seeded():
    ids = [f"p{i:02d}" for i in range(27)]
    a, = make_splits(table_of(ids), seed=1)
    b, = make_splits(table_of(ids), seed=1)
    c, = make_splits(table_of(ids), seed=2)
    assert a == b and a != c
    assert (len(a.train), len(a.validation), len(a.test)) == (12, 6, 9)
    _disjoint(a)


def test_literature_folds():
    splits = make_splits(table_of(DISFA_IDS), "literature")
    assert [sp.test for sp in splits] == list(LITERATURE_FOLDS)
    for sp in splits:
        _disjoint(sp)
        assert len(sp.validation) == 3 and len(sp.train) == 15


def test_literature_needs_disfa_subjects():
    with pytest.raises(UsageError, match="kfold:3"):
        make_splits(table_of(["a", "b", "c"]), "literature")


def test_kfold_covers_every_subject_once_in_test():
    ids = [f"s{i}" for i in range(10)]
    splits = make_splits(table_of(ids), "kfold:4", seed=0)
    tests = [s for sp in splits for s in sp.test]
    assert sorted(tests) == sorted(ids)
    for sp in splits:
        _disjoint(sp)
        assert sp.validation


def test_own_split_and_masks():
    ids = ["v1", "v2", "v3", "v4", "v5", "v6"]
    split = {"v1": "train", "v2": "train", "v3": "train", "v4": "train", "v5": "validation", "v6": "validation"}
    t = table_of(ids, split=split)
    (sp,) = make_splits(t, "own")
    assert sp.test == ("v5", "v6") and len(sp.validation) == 1 and len(sp.train) == 3
    assert np.array_equal(sp.mask(t, "test"), t.frames["subject"].isin(["v5", "v6"]).to_numpy())


@pytest.mark.parametrize("bad", ["kfold:1", "kfold:x", "lit", "own"])
def test_bad_protocols(bad):
    with pytest.raises(UsageError):
        make_splits(table_of(["a", "b", "c", "d"]), bad)
