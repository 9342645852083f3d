"""The renderer's second domain (issue 33): other studio, camera and people; the same actions."""

import json

import numpy as np
import pytest

from featbench.app.cli import main
from featbench.core.datasets import load_dataset, load_landmarks
from featbench.core.errors import UsageError
from featbench.core.synth import INFO_FILE, generate_dataset


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("dom")
    kw = dict(subjects=3, frames=16, seed=5, progress=False, workers=1, right_camera=False)
    return (generate_dataset(base / "a", domain="a", **kw),
            generate_dataset(base / "b", domain="b", **kw))


def test_a_domain_changes_how_faces_look_not_what_they_do(pair):
    a, b = pair
    for la in sorted((a / "ActionUnit_Labels").rglob("*.txt")):
        lb = b / la.relative_to(a)
        assert la.read_bytes() == lb.read_bytes(), la.name   # the same AU timeline
    va = (a / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").read_bytes()
    vb = (b / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").read_bytes()
    assert va != vb
    assert json.loads((b / INFO_FILE).read_text())["domain"] == "b"


def test_domain_b_is_farther_turned_and_darker(pair):
    """Measured on the rendered frames: faces about 0.65x as wide, turned toward one side, a
    darker picture; the AU labels of every frame the same as domain a's."""
    from featbench.core.faces import iter_frames

    ta, tb = (load_dataset("synth", root=r) for r in pair)
    np.testing.assert_array_equal(ta.labels(), tb.labels())
    la, lb = load_landmarks(ta), load_landmarks(tb)
    width = lambda lm: lm[:, 16, 0] - lm[:, 0, 0]  # noqa: E731  jaw corner to jaw corner
    ratio = np.median(width(lb)) / np.median(width(la))
    assert 0.5 < ratio < 0.8, ratio
    # yaw: the nose tip sits off the eyes' midpoint toward one side in b, centred in a
    off = lambda lm: np.median((lm[:, 30, 0] - (lm[:, 36, 0] + lm[:, 45, 0]) / 2)  # noqa: E731
                               / (lm[:, 45, 0] - lm[:, 36, 0]))
    assert abs(off(la)) < 0.08 and abs(off(lb)) > abs(off(la)) + 0.04
    mean = lambda t: np.mean([img.mean() for _, img in iter_frames(t)])  # noqa: E731
    assert mean(tb) < mean(ta) - 5


def test_domain_b_has_its_own_people(tmp_path):
    from featbench.core.synth._subject import SubjectVideo

    a = SubjectVideo(0, 1, 4, domain="a")
    b = SubjectVideo(0, 1, 4, domain="b")
    assert not np.allclose(a.identity.skin, b.identity.skin)
    assert a.identity.face_w != b.identity.face_w
    np.testing.assert_array_equal(a.intensity, b.intensity)
    # over many people: b's pool wears glasses and beards more often, skin darker on average
    pa, pb = ([SubjectVideo(0, i, 4, domain=d).identity for i in range(60)] for d in "ab")
    assert sum(p.glasses for p in pb) > sum(p.glasses for p in pa) + 5
    assert np.mean([p.skin.mean() for p in pb]) < np.mean([p.skin.mean() for p in pa]) - 10


def test_bad_domain_arguments(tmp_path, capsys):
    with pytest.raises(UsageError, match="domain"):
        generate_dataset(tmp_path / "x", domain="c", subjects=3, frames=4, progress=False)
    with pytest.raises(UsageError, match="posed-expression"):
        generate_dataset(tmp_path / "y", layout="expression", domain="b", subjects=3, frames=1,
                         progress=False)
    assert main(["data", "synth", "--domain", "z", "--root", str(tmp_path / "z")]) == 2
    assert "unknown domain 'z'" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_cli_writes_the_built_in_domain_b_set(tmp_path, capsys):
    rc = main(["--workspace", str(tmp_path), "data", "synth", "--domain", "b", "--subjects", "3",
               "--frames", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "domain b" in out and "--dataset synth-b" in out
    from featbench.core.workspace import Workspace

    t = load_dataset("synth-b", workspace=Workspace(tmp_path))
    assert t.dataset == "synth-b" and t.subjects == ["SN001", "SN002", "SN003"]
