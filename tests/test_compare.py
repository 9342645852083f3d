"""Intervals stored with runs, `featbench compare`, the report's decided claims, --latex and
--repeats: through the real writers, classify runs and the command line."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from featbench.app.cli import main
from featbench.app.report import LATEX_TABLE, make_report
from featbench.core import stats
from featbench.core.metrics import au_metrics
from featbench.core.results import (read_au_intervals, read_summary_rows, write_predictions,
                                    write_run)
from featbench.core.splits import make_splits
from featbench.core.workspace import Workspace

from test_classify import make_codes, make_table, run, setup, write_features  # noqa: F401
from test_stats import simulated

#: run -> detector skill on the shared labels
RUNS = {"hog__auto__svm": 3.0, "hog__full__svm": 1.2, "hog__full__lda": 1.15,
        "dlib_face__full__svm": 0.8}


def write_simulated(ws, runs=RUNS, *, intervals=True, own_labels=()):
    """Write each simulated run's predictions file, CSV and summary row through the real writers
    (per-AU metrics by metrics.py from the frames); ``intervals=False``: as featbench wrote runs
    before intervals existed; runs in ``own_labels`` get labels of their own (as a run at another
    ``--threshold`` has)."""
    first = simulated(seed=0)
    for i, (name, skill) in enumerate(runs.items()):
        p = simulated(seed=10 + i, skill=skill,
                      labels=None if name in own_labels else first["labels"])
        path = ws.predictions_path("synth", name)
        write_predictions(path, frames=p["frames"], labels=p["labels"], scores=p["scores"],
                          decisions=p["decisions"], fold=p["fold"], aus=p["aus"],
                          thresholds=np.full(len(p["aus"]), 0.5), run=name)
        rows = [{"au": au, **{k: v for k, v in au_metrics(p["labels"][:, a], p["decisions"][:, a],
                                                          p["scores"][:, a]).items() if k != "frames"},
                 "threshold": 0.5} for a, au in enumerate(p["aus"])]
        model, region, clf = name.split("__")
        write_run(ws, "synth", name, rows, meta={"model": model, "region": region, "clf": clf,
                                                  "weights": "none", "protocol": "paper"},
                  predictions=path if intervals else None)
    return {r["run"]: r for r in read_summary_rows(ws.summary_csv("synth"))}


def cli(*argv):
    """``python -m featbench ARGV`` in a fresh process: (status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "featbench", *argv], capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_a_classify_run_stores_an_interval_beside_every_metric(setup):
    ws, table, _ = setup
    with stats.using_settings(stats.CISettings(level=0.9, resamples=200)):
        out = run(ws, table, clf="lda")
    csv = pd.read_csv(out["csv"]).set_index("au")
    for metric in ("f1", "accuracy", "precision", "recall", "auc"):
        ok = csv[f"{metric}_lo"].notna()
        assert ok["mean"] and (csv.loc[ok, f"{metric}_lo"] <= csv.loc[ok, metric] + 1e-4).all()
        assert (csv.loc[ok, metric] <= csv.loc[ok, f"{metric}_hi"] + 1e-4).all()
    assert csv.loc["AU01", "f1"] == 1.0 and csv.loc["AU01", "f1_lo"] == csv.loc["AU01", "f1_hi"] == 1.0
    row = read_summary_rows(ws.summary_csv("synth"))[0]
    assert float(row["mean_f1_lo"]) < float(row["mean_f1"]) < float(row["mean_f1_hi"])
    assert (float(row["ci_level"]), int(row["ci_resamples"]), int(row["ci_subjects"])) == (0.9, 200, 9)


def test_report_adds_intervals_to_runs_written_without_them(tmp_path):
    """An older workspace gets the same intervals on `featbench report`, without retraining."""
    with_them = write_simulated(Workspace(tmp_path / "new"))
    ws = Workspace(tmp_path / "old")
    before = write_simulated(ws, intervals=False)
    assert "mean_f1_lo" not in before["hog__full__svm"]
    text = make_report(ws, "synth").read_text()
    after = {r["run"]: r for r in read_summary_rows(ws.summary_csv("synth"))}
    for name, row in with_them.items():
        for key in ("mean_f1_lo", "mean_f1_hi", "mean_auc_lo", "ci_subjects"):
            assert after[name][key] == row[key]
        assert read_au_intervals(ws, "synth", name) == read_au_intervals(
            Workspace(tmp_path / "new"), "synth", name)
    r = after["hog__auto__svm"]
    shown = (f"{float(r['mean_f1']) * 100:.1f} [{float(r['mean_f1_lo']) * 100:.1f}, "
             f"{float(r['mean_f1_hi']) * 100:.1f}]")
    assert shown in text and "percentile bootstrap over 9 test subjects" in text
    assert "*random at the base rate*" in text and "*all-positive baseline*" in text


def test_compare_prints_the_paired_table_and_json(tmp_path, capsys):
    rows = write_simulated(Workspace(tmp_path))
    a, b = "hog__auto__svm", "hog__full__svm"
    assert main(["--workspace", str(tmp_path), "compare", a, b]) == 0
    text = capsys.readouterr().out
    assert "paired over 9 test subjects" in text and "exact, all 512 swaps" in text
    assert text.count("| AU") == 5 and "| mean |" in text and "A is better than B" in text
    assert main(["--workspace", str(tmp_path), "compare", a, b, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    diff = float(rows[a]["mean_f1"]) - float(rows[b]["mean_f1"])  # the tables' own numbers
    assert out["mean"]["diff"] == pytest.approx(diff, abs=1e-4)
    assert out["mean"]["lo"] < out["mean"]["diff"] < out["mean"]["hi"]
    assert out["mean"]["verdict"] == "holds" and out["subjects"] == 9 and len(out["aus"]) == 4
    assert main(["--workspace", str(tmp_path), "compare", b, b, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["mean"]["diff"] == 0 and same["mean"]["p"] == 1 and same["mean"]["verdict"] == "not decided"


def test_a_bad_run_name_is_one_line_and_exit_2(tmp_path):
    write_simulated(Workspace(tmp_path))
    status, out, err = cli("--workspace", str(tmp_path), "compare", "hog__auto__svn",
                           "hog__full__svm")
    assert status == 2 and "did you mean 'hog__auto__svm'" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out


@pytest.mark.parametrize("argv, message", [
    (["compare", "hog__auto__svm", "nothing__full__svm"], "unknown run 'nothing__full__svm'"),
    (["compare", "hog__auto__svm", "hog__full__svm", "--ci-level", "95"], "--ci-level 95"),
    (["report", "--ci-resamples", "5"], "--ci-resamples 5"),
    (["classify", "--clf", "svm", "--protocol", "paper", "--repeats", "3"],
     "--repeats needs a k-fold protocol"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    write_simulated(Workspace(tmp_path))
    before = (tmp_path / "results" / "synth" / "summary.csv").read_bytes()
    assert main(["--workspace", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "results" / "synth" / "summary.csv").read_bytes() == before


def test_report_latex_bolds_the_best_and_marks_its_ties(tmp_path):
    runs = {"hog__auto__svm": 1.5, "hog__full__svm": 1.45, "dlib_face__full__svm": 0.2}
    write_simulated(Workspace(tmp_path), runs)
    assert main(["--workspace", str(tmp_path), "report", "--latex"]) == 0
    tex = (tmp_path / "results" / "synth" / LATEX_TABLE).read_text()
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}"):
        assert cmd in tex
    lines = {ln.split(" & ")[0]: ln for ln in tex.splitlines() if ln.startswith(r"\texttt")}
    rows = {r["run"]: float(r["mean_f1"]) for r in read_summary_rows(
        tmp_path / "results" / "synth" / "summary.csv")}
    best = max(rows, key=rows.get)

    def line(name):
        return lines["\\texttt{" + name.replace("_", "\\_") + "}"]

    assert r"\textbf{" in line(best) and tex.count(r"\textbf{") == 1
    assert sum(r"$^\dagger$" in ln for ln in lines.values()) == 1  # the near twin, not the weak run
    assert r"$^\dagger$" not in line("dlib_face__full__svm")


def test_the_reports_claims_are_decided_by_the_test(tmp_path):
    write_simulated(Workspace(tmp_path))
    text = make_report(Workspace(tmp_path), "synth").read_text()
    claims = text.split("## The paper's claims on this data")[1].split("## ")[0]
    regions = next(ln for ln in claims.splitlines() if "face region beats" in ln)
    svm_lda = next(ln for ln in claims.splitlines() if "SVM beats LDA" in ln)
    assert regions.endswith("| **holds** |")  # skill 3.0 against 1.2
    assert svm_lda.endswith("| not decided |")  # 1.2 against 1.15 on 9 subjects
    assert "Holm-adjusted over the 2 comparisons" in claims
    ranking = text.split("## Runs by mean F1")[1].split("## ")[0]
    assert "| top |" in ranking and "below (p" in ranking


def test_repeated_splits_reassign_subjects_and_keep_the_other_seeds():
    table = make_table(n_frames=4, subjects=[f"S{i:02d}" for i in range(12)])
    tests = [tuple(s.test for s in make_splits(table, f"kfold:3:r{i}")) for i in (1, 2)]
    assert tests[0] != tests[1]
    assert make_splits(table, "kfold:3:r1", seed=7) == make_splits(table, "kfold:3:r1", seed=0)
    assert make_splits(table, "kfold:3:r0") == make_splits(table, "kfold:3", seed=0)


def test_repeated_runs_get_a_stability_table_and_their_own_report_section(tmp_path):
    from featbench.app.repeats import write_repeats
    from featbench.core.splits import repeat_protocols

    ws = Workspace(tmp_path)
    table = make_table(n_frames=20, subjects=[f"SN{i:03d}" for i in range(9)])
    write_features(ws, table, make_codes(table))
    names = set()
    for clf in ("lda", "svm"):
        for protocol in repeat_protocols("kfold:3", 3):
            names.add(run(ws, table, clf=clf, protocol=protocol)["run"])
    assert {n.rsplit("__", 1)[1] for n in names} == {"kfold3r1", "kfold3r2", "kfold3r3"}
    lines = write_repeats(ws, "synth", read_summary_rows(ws.summary_csv("synth")))
    found = pd.read_csv(ws.results_dir("synth") / "repeats_kfold3.csv")
    assert set(found["run"]) == {"toy__full__lda", "toy__full__svm"}
    assert (found["repeats"] == 3).all() and found["first_share"].sum() >= 1
    f1 = found[[f"mean_f1_r{i}" for i in (1, 2, 3)]].to_numpy()
    assert np.allclose(found["mean_f1_sd"], f1.std(axis=1, ddof=1), atol=1e-4)
    assert any("need at least 3 runs" in ln for ln in lines)  # two runs: no rank correlation
    text = make_report(ws, "synth").read_text()
    assert "## Repeated splits" in text and "kfold3r2" not in text.split("## Repeated")[0]


def test_repeats_need_a_kfold_protocol(tmp_path, capsys):
    for argv in (["run", "--repeats", "3"], ["run", "--protocol", "kfold:3", "--repeats", "1"]):
        assert main(["--workspace", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert "--repeats" in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_run_repeats_every_frozen_code_run_and_its_votes_not_the_fine_tuned():
    from featbench.app import pipeline

    preset = pipeline.PRESETS["quick"]
    ctx = pipeline._Context(Workspace("/nonexistent"), "synth", None, preset, "kfold:3",
                            tag=("kfold3",), wplan=pipeline.resolve_weights(preset),
                            progress=False, repeats=("kfold:3:r1", "kfold:3:r2"),
                            table=make_table(n_frames=2))
    _, steps = pipeline._repeat_steps(ctx)
    names = [s.name for s in steps]
    frozen = [f"{m}__{r}__{c}" for m, r, c in pipeline.plan_runs(preset, ctx.wplan)]
    for tag in ("kfold3r1", "kfold3r2"):
        assert {f"{f}__{tag}" for f in frozen} <= set(names)
    assert names.count("ensemble fe") == names.count("ensemble fe+region") == 2
    assert not any("ft" in n.split("__")[0] or n.endswith("+ft") or "ft+" in n for n in names)


def test_intensity_runs_get_icc_intervals_and_compare_by_icc(tmp_path, capsys):
    from classify.task import get_task
    from featbench.core.metrics import intensity_metrics

    task = get_task("intensity")  # the intensity task says its columns and summary fields
    ws = Workspace(tmp_path)
    base = simulated(intensity=True)
    for name, noise in (("hog__full__ridge", 0.5), ("dlib_face__full__ridge", 1.5)):
        rng = np.random.default_rng(len(name))
        pred = np.clip(base["intensities"] + rng.normal(0, noise, base["scores"].shape), 0, 5)
        path = ws.predictions_path("synth", name)
        write_predictions(path, frames=base["frames"], labels=base["labels"], scores=pred,
                          decisions=(pred > 1.5).astype(np.int8), fold=base["fold"],
                          aus=base["aus"], thresholds=np.full(4, 1.5), intensities=base["intensities"],
                          run=name, task="intensity")
        rows = [{"au": au, **intensity_metrics(base["intensities"][:, a], pred[:, a],
                                               base["labels"][:, a]), "threshold": 1.5}
                for a, au in enumerate(base["aus"])]
        model, region, clf = name.split("__")
        write_run(ws, "synth", name, rows, predictions=path, columns=task.COLUMNS,
                  fields=task.summary_fields,
                  meta={"model": model, "region": region, "clf": clf, "task": "intensity"})
    rows = {r["run"]: r for r in read_summary_rows(ws.summary_csv("synth"))}
    good = rows["hog__full__ridge"]
    assert float(good["mean_icc_lo"]) < float(good["mean_icc"]) < float(good["mean_icc_hi"])
    assert float(good["mean_mae_lo"]) < float(good["mean_mae"]) < float(good["mean_mae_hi"])
    text = make_report(ws, "synth").read_text().split("## Intensity runs by mean ICC(3,1)")[1]
    assert f"{float(good['mean_icc']):.3f} [{float(good['mean_icc_lo']):.3f}, " in text
    assert "| top |" in text and "| below |" in text
    assert main(["--workspace", str(tmp_path), "compare", "hog__full__ridge",
                 "dlib_face__full__ridge", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "icc" and out["mean"]["verdict"] == "holds"
    assert out["mean"]["diff"] == pytest.approx(float(good["mean_icc"]) - float(
        rows["dlib_face__full__ridge"]["mean_icc"]), abs=1e-4)


def test_a_run_the_paired_test_cannot_pair_is_said_not_compared_and_the_report_goes_on(tmp_path):
    # a run on other labels (another --threshold, say) beside the others: before, the report
    # ended in "featbench: error: ... have other labels", exit 2, no report at all
    runs = {**RUNS, "dlib_face__auto__svm": 1.0}
    write_simulated(Workspace(tmp_path), runs, own_labels={"dlib_face__auto__svm"})
    assert main(["--workspace", str(tmp_path), "report"]) == 0
    ranking = (tmp_path / "results" / "synth" / "report.md").read_text().split(
        "## Runs by mean F1")[1].split("## ")[0]
    row = next(ln for ln in ranking.splitlines() if "`dlib_face__auto__svm`" in ln)
    assert "| not comparable |" in row
    assert "Not compared" in ranking and "other labels" in ranking
    assert ranking.count("below (p") + ranking.count("≈ top (p") == len(RUNS) - 1
    # the command that compares two runs still refuses them, in one line
    rc, _, err = cli("--workspace", str(tmp_path), "compare", "hog__auto__svm",
                     "dlib_face__auto__svm")
    assert rc == 2 and "other labels" in err and "Traceback" not in err


def test_vs_top_says_above_when_the_test_decides_for_the_lower_ranked_run():
    from featbench.app.comparisons import Comparer
    from featbench.app.report import _Evidence, _vs_top

    comparer = Comparer.__new__(Comparer)
    comparer.refused = {("top", "gone"): "top and gone share no AU"}
    ev = _Evidence(settings=stats.CISettings(), comparer=comparer, ties={
        "worse": {"diff": np.array([0.2, 0.1]), "p_adj": 0.01},     # diff = top - run
        "better": {"diff": np.array([-0.2, -0.1]), "p_adj": 0.01},
        "tied": {"diff": np.array([-0.2, -0.1]), "p_adj": 0.30}})
    assert _vs_top("worse", "top", ev) == "below (p 0.010)"
    assert _vs_top("better", "top", ev) == "above (p 0.010)"
    assert _vs_top("tied", "top", ev) == "≈ top (p 0.300)"
    assert _vs_top("gone", "top", ev) == "not comparable"
    assert _vs_top("absent", "top", ev) == "—"
