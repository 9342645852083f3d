"""The report's check of the paper's claims: comparisons found in summary rows, never assumed."""

from featbench.app.claims import check_claims, claims_lines


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
    found = {(c["claim"], c["a"], c["b"]): c["holds"] for c in check_claims(ROWS)}
    assert found[("ft", "dlib_face__full__ft__ml-headonly", "dlib_face__full__svm")] is True
    assert found[("ft_codes", "dlib_face-ft__full__svm", "dlib_face__full__svm")] is True
    assert found[("fe_ft", "ensemble-fe+ft__full__vote", "ensemble-fe__full__vote")] is True
    assert found[("regions", "hog__auto__svm", "hog__full__svm")] is True
    assert found[("ensemble", "ensemble-fe__full__vote", "hog__full__svm")] is False  # 44 < 46
    assert found[("ensemble", "ensemble-fe+ft__full__vote", "dlib_face__full__ft__ml-headonly")] is True
    assert found[("svm_lda", "hog__full__svm", "hog__full__lda")] is False
    assert found[("svm_lda", "dlib_face__full__svm", "dlib_face__full__lda")] is True
    assert found[("pretrained", "dlib_face__full__ft__ml-headonly",
                  "dlib_face__full__ft__ml-headonly-rand")] is True
    runs = {r for c in found for r in c[1:]}
    assert "alexnet__full__svm" not in runs and "hog__full__svm__literature" not in runs
    # the random-init fine-tuned run is no "ft" candidate, though it shares the slot
    assert not any(c[0] == "ft" and c[1].endswith("rand") for c in found)


def test_the_section_says_what_does_not_hold_and_what_was_left_out():
    text = "\n".join(claims_lines(ROWS, left_out={"alexnet": "alexnet-owt-7be5be79.pth not cached"}))
    verdict = next(ln for ln in text.splitlines() if ln.startswith("**Do not hold"))
    assert "an ensemble beats its best member (in some comparisons)" in verdict
    assert "a linear SVM beats LDA on the same codes (in some comparisons)" in verdict
    assert "fine-tuned network beats" not in verdict
    assert "| 47.0 vs 43.0 | yes (+4.0) |" in text
    assert "`alexnet`" in text and "--controls" in text
    only_frozen = claims_lines([r for r in ROWS if r["run"] in ("hog__full__svm", "hog__auto__svm")])
    assert any(ln.startswith("Not compared") and "fine-tuned" in ln for ln in only_frozen)
    assert any(ln == "Every claim compared here holds on this data." for ln in only_frozen)
