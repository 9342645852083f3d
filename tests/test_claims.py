"""The report's check of the paper's claims: comparisons found in summary rows, never assumed."""

import numpy as np
import pytest

from featbench.app.claims import check_claims, claims_lines
from featbench.core.results import read_summary_rows


def _row(run, f1, weights="dlib", members=""):
    return {"run": run, "mean_f1": f1, "weights": weights, "members": members}


ROWS = [
    _row("hog__full__svm", 0.46, "none"), _row("hog__full__lda", 0.48, "none"),
    _row("hog__auto__svm", 0.52, "none"),
    _row("dlib_face__full__svm", 0.43), _row("dlib_face__full__lda", 0.41),
    _row("dlib_face__full__ft__ml-headonly", 0.47),
    _row("dlib_face-ft__full__svm", 0.45, "finetuned:dlib_face__full__ft__ml-headonly sha256:ab"),
    _row("dlib_face__full__ft__ml-headonly-rand", 0.12, "random:0"),
    _row("alexnet__full__svm", 0.30, "random:0"),  # a control: only in the pretraining claim
    _row("ensemble-fe__full__vote", 0.44, "hog=none; dlib_face=dlib",
         "hog__full__svm,dlib_face__full__svm"),
    _row("ensemble-fe+ft__full__vote", 0.50, "x", "hog__full__svm,dlib_face__full__ft__ml-headonly,"
         "dlib_face-ft__full__svm"),
    _row("hog__full__svm__literature", 0.99, "none"),  # another protocol: never compared
]


def test_each_claim_is_compared_on_the_runs_that_test_it():
    found = {(c["claim"], c["a"], c["b"]) for c in check_claims(ROWS)}
    assert found == {
        ("ft", "dlib_face__full__ft__ml-headonly", "dlib_face__full__svm"),
        ("ft_codes", "dlib_face-ft__full__svm", "dlib_face__full__svm"),
        ("fe_ft", "ensemble-fe+ft__full__vote", "ensemble-fe__full__vote"),
        ("regions", "hog__auto__svm", "hog__full__svm"),
        ("ensemble", "ensemble-fe__full__vote", "hog__full__svm"),  # its best member
        ("ensemble", "ensemble-fe+ft__full__vote", "dlib_face__full__ft__ml-headonly"),
        ("svm_lda", "hog__full__svm", "hog__full__lda"),
        ("svm_lda", "dlib_face__full__svm", "dlib_face__full__lda"),
        ("pretrained", "dlib_face__full__ft__ml-headonly", "dlib_face__full__ft__ml-headonly-rand")}
    # a control (alexnet random:0) and another protocol's run are in none but the pretraining claim;
    # the random-init fine-tuned run is no "ft" candidate, though it shares the slot


def test_every_fine_tuning_variant_is_a_comparison_not_the_one_best_on_the_test_set():
    # two variants of one slot: picking the better by test F1 and then testing it on the same
    # test frames would be a choice made on the test set; each enters the Holm family instead
    rows = ROWS + [_row("dlib_face__full__ft__fc67", 0.40)]
    ft = sorted((c["a"], c["b"]) for c in check_claims(rows) if c["claim"] == "ft")
    assert ft == [("dlib_face__full__ft__fc67", "dlib_face__full__svm"),
                  ("dlib_face__full__ft__ml-headonly", "dlib_face__full__svm")]
    assert len(check_claims(rows)) == len(check_claims(ROWS)) + 1


def test_without_predictions_no_claim_is_judged_by_its_point_estimates():
    text = "\n".join(claims_lines(ROWS, left_out={"alexnet": "alexnet-owt-7be5be79.pth not cached"}))
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "`" in ln]
    assert len(rows) == 9 and all(ln.endswith("| not tested (no predictions file) |") for ln in rows)
    assert "| 47.0 vs 43.0 |" in text and "holds" not in text.split("verdict |")[1]
    assert "`alexnet`" in text and "--controls" in text
    only_frozen = claims_lines([r for r in ROWS if r["run"] in ("hog__full__svm", "hog__auto__svm")])
    assert any(ln.startswith("Not compared") and "fine-tuned" in ln for ln in only_frozen)


def test_claims_hold_reverse_or_stay_undecided_by_the_paired_test(tmp_path):
    """Decided on simulated predictions: regions much better (holds), LDA much better than the
    SVM (reversed), two equal ensembles' members (not decided); p Holm-adjusted over the table."""
    from featbench.app.comparisons import Comparer
    from featbench.core.workspace import Workspace

    from test_compare import write_simulated

    ws = Workspace(tmp_path)
    write_simulated(ws, {"hog__auto__svm": 3.0, "hog__full__svm": 0.8, "hog__full__lda": 3.0,
                         "dlib_face__full__svm": 1.5, "dlib_face__full__lda": 1.5})
    rows = [{"run": r["run"], "mean_f1": float(r["mean_f1"]), "weights": "none", "members": ""}
            for r in read_summary_rows(ws.summary_csv("synth"))]
    found = {(c["a"], c["b"]): c for c in check_claims(rows, comparer=Comparer(ws, "synth"))}
    assert found[("hog__auto__svm", "hog__full__svm")]["verdict"] == "holds"
    assert found[("hog__full__svm", "hog__full__lda")]["verdict"] == "reversed"
    same = found[("dlib_face__full__svm", "dlib_face__full__lda")]
    assert same["verdict"] == "not decided" and same["lo"] < 0 < same["hi"]
    raw = sorted(c["p"] for c in found.values())
    assert sorted(c["p_adj"] for c in found.values()) == pytest.approx(
        list(np.maximum.accumulate(np.minimum(1, [p * (len(raw) - i) for i, p in enumerate(raw)]))))
    text = "\n".join(claims_lines(rows, comparer=Comparer(ws, "synth")))
    assert "**Reversed on this data**" in text and "**Not decided at this sample size**" in text
