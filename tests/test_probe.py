"""featbench probe identity (issue 33): a linear probe of the subject in a network's codes,
frames split in time per video, accuracy against chance with a subject-bootstrap interval."""

import numpy as np
import pandas as pd
import pytest

from classify.probe import PROBE_CSV, identity_probe, read_probe_rows, subject_bootstrap, time_split
from extract.store import open_store
from featbench.app.cli import main
from featbench.core.errors import MissingRunError, UsageError
from featbench.core.frames import KEY_DTYPE, FrameTable, build_frames
from featbench.core.workspace import Workspace

SUBJECTS = ("S1", "S2", "S3", "S4", "S5", "S6")
N_FRAMES = 40


def make_table():
    rows = [{"subject": s, "video": f"{s}_v", "frame": f, "source": "", "source_index": f,
             "landmark_file": "", "split": "", "AU01": f % 2}
            for s in SUBJECTS for f in range(N_FRAMES)]
    return FrameTable("toyset", "/nonexistent", ("AU01",), build_frames(rows, ("AU01",)))


def write_codes(ws, table, model, codes):
    with open_store(ws.features_path(table.dataset, model), keys=table.keys(), model=model,
                    layer="fc", weights="random:0", input_size=64, dims=codes.shape[1],
                    overwrite=True) as w:
        w.write("full", 0, codes)


@pytest.fixture
def setup(tmp_path):
    """Codes ``ident``: each subject a point plus noise (identity everywhere); ``noise``: none."""
    ws, table = Workspace(tmp_path), make_table()
    rng = np.random.default_rng(0)
    subj = np.repeat(np.arange(len(SUBJECTS)), N_FRAMES)
    centres = rng.normal(size=(len(SUBJECTS), 16)) * 3
    write_codes(ws, table, "ident", (centres[subj] + rng.normal(size=(len(subj), 16))).astype(np.float32))
    write_codes(ws, table, "noise", rng.normal(size=(len(subj), 16)).astype(np.float32))
    return ws, table


def _keys(spec):
    """KEY_DTYPE keys from [(subject, video, n_frames)], frames shuffled (order must not matter)."""
    rows = [(s.encode(), v.encode(), f) for s, v, n in spec for f in range(n)]
    keys = np.array(rows, dtype=KEY_DTYPE)
    return keys[np.random.default_rng(1).permutation(len(keys))]


def test_time_split_by_hand():
    keys = _keys([("A", "A_1", 10), ("A", "A_2", 7), ("B", "B_1", 20)])
    train, test = time_split(keys, train_share=0.5, gap_share=0.1)
    assert not (train & test).any()
    for video, n in (("A_1", 10), ("A_2", 7), ("B_1", 20)):
        sel = keys["video"] == video.encode()
        n_train, n_gap = int(n * 0.5), int(n * 0.1)
        # brute force: frame f trains iff f < n_train, tests iff f >= n_train + n_gap
        for k in np.flatnonzero(sel):
            f = keys["frame"][k]
            assert train[k] == (f < n_train) and test[k] == (f >= n_train + n_gap), (video, f)
    with pytest.raises(UsageError, match="train share"):
        time_split(keys, train_share=0.95, gap_share=0.1)


def test_probe_accuracy_matches_an_independent_fit(setup):
    """The probe's accuracy equals a fit done here on hand-made masks, and its interval
    brackets it; identity codes reach ~1, noise codes stay near chance (1/6)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from extract.store import read_codes

    ws, table = setup
    out = identity_probe(ws, table, model="ident")
    keys, codes, _ = read_codes(ws.features_path("toyset", "ident"))
    subject = keys["subject"].astype(str)
    train = keys["frame"] < N_FRAMES // 2
    test = keys["frame"] >= N_FRAMES // 2 + N_FRAMES // 10
    sc = StandardScaler().fit(codes[train])
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(sc.transform(codes[train]), subject[train])
    want = float(np.mean(lr.predict(sc.transform(codes[test])) == subject[test]))
    assert out["accuracy"] == pytest.approx(want)
    assert out["test_frames"] == test.sum() and out["train_frames"] == train.sum()
    assert out["accuracy"] > 0.95 and out["chance"] == pytest.approx(1 / 6)
    assert out["accuracy_lo"] <= out["accuracy"] <= out["accuracy_hi"]
    noise = identity_probe(ws, table, model="noise")
    assert noise["accuracy"] < 0.4 and noise["accuracy_lo"] < 1 / 6 + 0.1
    rows = read_probe_rows(ws, "toyset")
    assert sorted(rows["model"]) == ["ident", "noise"]       # one row each, a rerun replaces
    identity_probe(ws, table, model="noise", seed=3)
    assert len(read_probe_rows(ws, "toyset")) == 2


def test_subject_bootstrap_resamples_subjects():
    # every frame right: the interval is [1, 1]; one subject all wrong among 4: it moves
    subject = np.repeat(["a", "b", "c", "d"], 10)
    assert subject_bootstrap(np.ones(40, bool), subject) == (1.0, 1.0)
    correct = subject != "d"
    lo, hi = subject_bootstrap(correct, subject, seed=0)
    assert lo < 0.75 < hi and lo >= 0.25 and hi <= 1.0
    assert (lo, hi) == subject_bootstrap(correct, subject, seed=0)   # seeded
    assert all(np.isnan(subject_bootstrap(correct[:10], subject[:10])))  # one subject: none


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    ws, table = setup
    rc = main(["--workspace", str(tmp_path), "data", "synth", "--subjects", "3", "--frames", "4",
               "--root", str(tmp_path / "s")])
    capsys.readouterr()
    base = ["--workspace", str(tmp_path), "probe", "identity", "--dataset", "synth", "--root",
            str(tmp_path / "s")]
    assert main(base + ["--model", "hog"]) == 2
    err = capsys.readouterr().err
    assert "featbench extract --model hog" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--model", "hog", "--region", "chin"]) == 2
    assert "--region" in capsys.readouterr().err
    with pytest.raises(MissingRunError):
        identity_probe(ws, table, model="nothing")


def test_report_shows_the_probe_beside_the_au_f1(setup):
    from featbench.app.report_probe import probe_lines

    ws, table = setup
    identity_probe(ws, table, model="ident")
    ok = pd.DataFrame([
        {"run": "ident__full__svm", "model": "ident", "region": "full", "clf": "svm", "mean_f1": 0.41},
        {"run": "ident__full__lda", "model": "ident", "region": "full", "clf": "lda", "mean_f1": 0.52},
        {"run": "ident__full__ft", "model": "ident", "region": "full", "clf": "ft", "mean_f1": 0.90},
        {"run": "ensemble-fe__full__vote", "model": "ensemble-fe", "region": "full", "clf": "vote",
         "mean_f1": 0.95}])
    text = "\n".join(probe_lines(ws, "toyset", ok))
    row = next(line for line in text.splitlines() if line.startswith("| `ident`"))
    assert "`ident__full__lda`" in row and "52.0" in row and "16.7" in row  # not the fine-tuned net
    assert probe_lines(Workspace(ws.root / "elsewhere"), "toyset", ok) == []
    (ws.results_dir("toyset") / PROBE_CSV).write_text("a,b\n1,2\n")
    text = "\n".join(probe_lines(ws, "toyset", ok))   # a damaged side table: said, not fatal
    assert "Not shown" in text and "not the identity probe's table" in text
