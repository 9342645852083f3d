"""featbench.core.stats against independent computations: the run's own metrics, a plain-loop
cluster bootstrap, hand-worked corrections, and the error rate of the paired test."""

import numpy as np
import pytest

from featbench.core import stats
from featbench.core.errors import StoreError, UsageError
from featbench.core.frames import KEY_DTYPE
from featbench.core.metrics import au_metrics, intensity_metrics, nanmean

AUS = ["AU01", "AU02", "AU04", "AU12"]


def simulated(seed=0, *, subjects=9, frames=40, folds=1, skill=1.0, intensity=False, labels=None):
    """A predictions dict (the arrays of a predictions file) of a noisy detector on ``subjects``
    x ``frames`` frames: labels with subject-specific base rates, scores = skill * label +
    a per-subject offset + noise, decisions = score > 0.5; a few unlabelled (-1) frames."""
    rng = np.random.default_rng(seed)
    n, k = subjects * frames, len(AUS)
    keys = np.zeros(n, KEY_DTYPE)
    keys["subject"] = np.repeat([f"SN{i:03d}".encode() for i in range(subjects)], frames)
    keys["video"] = b"v"
    keys["frame"] = np.tile(np.arange(frames), subjects)
    if labels is None:
        rate = np.repeat(rng.uniform(0.1, 0.4, (subjects, k)), frames, axis=0)
        labels = (rng.uniform(size=(n, k)) < rate).astype(np.int8)
        labels[rng.uniform(size=(n, k)) < 0.02] = -1
    scores = skill * labels + rng.normal(0, 1, (n, k)) + np.repeat(
        rng.normal(0, 0.5, (subjects, k)), frames, axis=0)
    out = {"frames": keys, "labels": labels, "scores": scores.astype(np.float32),
           "decisions": (scores > 0.5).astype(np.int8), "aus": list(AUS),
           "fold": np.repeat(np.arange(subjects) % folds, frames).astype(np.int8)}
    if intensity:
        true = np.clip(np.round(2.5 * (labels == 1) + rng.normal(0, 1, (n, k))), 0, 5)
        true = np.where(labels < 0, -1, true).astype(np.int8)
        pred = np.clip(true + rng.normal(0, 1, (n, k)), 0, 5).astype(np.float32)
        out.update(intensities=true, scores=pred, decisions=(pred > 1.5).astype(np.int8),
                   labels=np.where(true < 0, -1, true >= 2).astype(np.int8))
    return out


@pytest.mark.parametrize("folds", [1, 3])
def test_the_point_estimate_is_the_runs_own_metric(folds):
    """Per fold, then averaged over folds, as classifier runs compute it (metrics.py's functions
    on the frames); pooled over every frame for an ensemble."""
    p = simulated(folds=folds, intensity=True)
    mine = stats.subject_table(p).observed()
    for a in range(len(AUS)):
        per_fold = [intensity_metrics(p["intensities"][m, a], p["scores"][m, a], p["labels"][m, a])
                    for m in (p["fold"] == f for f in range(folds))]
        for key in ("f1", "accuracy", "precision", "recall", "auc", "icc", "pearson", "mae"):
            assert mine[key][a] == pytest.approx(nanmean(d[key] for d in per_fold), abs=1e-9), key
    pooled = stats.subject_table(p, pooled=True).observed()
    for a in range(len(AUS)):
        m = au_metrics(p["labels"][:, a], p["decisions"][:, a], p["scores"][:, a])
        assert pooled["f1"][a] == pytest.approx(m["f1"]) and pooled["auc"][a] == pytest.approx(m["auc"])
    assert mine["f1"][-1] == pytest.approx(np.mean(mine["f1"][:-1]))  # the mean row


def test_cluster_bootstrap_agrees_with_a_plain_loop():
    """A brute-force stratified cluster bootstrap (a plain loop: draw subjects with replacement
    within each fold, concatenate their frames, score each fold, average) gives the same
    percentile interval within resampling noise."""
    p = simulated(seed=3, folds=2)
    settings = stats.CISettings(resamples=2000)
    found = stats.run_intervals(stats.subject_table(p), settings)
    rng = np.random.default_rng(1)
    subj, fold = p["frames"]["subject"], p["fold"]
    per_fold = [np.unique(subj[fold == f]) for f in (0, 1)]
    means, au0 = [], []
    for _ in range(2000):
        scores = []
        for members in per_fold:
            rows = np.concatenate([np.flatnonzero(subj == s)
                                   for s in rng.choice(members, members.size)])
            scores.append([au_metrics(p["labels"][rows, a], p["decisions"][rows, a])["f1"]
                           for a in range(len(AUS))])
        f1 = np.nanmean(np.array(scores, dtype=float), axis=0)
        means.append(np.mean(f1))  # nan when an AU has no positive in the draw: left out below
        au0.append(f1[0])
    means = [m for m in means if not np.isnan(m)]
    for loop, i in ((means, -1), (au0, 0)):
        lo, hi = np.percentile(loop, [2.5, 97.5])
        assert found["f1"][1][i] == pytest.approx(lo, abs=0.015)
        assert found["f1"][2][i] == pytest.approx(hi, abs=0.015)
        assert lo < found["f1"][0][i] < hi


def test_the_mean_over_aus_is_only_taken_over_resamples_that_define_every_au():
    """An AU whose positives are all in one of 9 subjects is undefined in about 35 % of
    resamples: the mean's interval must be the percentiles of means over both AUs (a plain loop),
    not of means over whichever AUs a resample happens to define (before: the upper bound was
    AU01's F1 alone, 0.93 against a mean of 0.75)."""
    rng = np.random.default_rng(0)
    subjects, frames = 9, 100
    keys = np.zeros(subjects * frames, KEY_DTYPE)
    keys["subject"] = np.repeat([f"SN{i:03d}".encode() for i in range(subjects)], frames)
    keys["video"], keys["frame"] = b"v", np.tile(np.arange(frames), subjects)
    y = np.zeros((subjects * frames, 2), np.int8)
    y[:, 0] = rng.random(len(y)) < 0.4
    y[:frames // 2, 1] = 1                     # AU02: positive in the first subject only
    d = y.copy()
    flip = rng.random(len(y)) < 0.05
    d[flip, 0] = 1 - d[flip, 0]
    d[:, 1] = 0
    d[:frames // 5, 1] = 1                     # 20 of its 50 positives found
    p = {"frames": keys, "labels": y, "scores": d.astype(np.float32), "decisions": d,
         "fold": np.zeros(len(y), np.int8), "aus": ["AU01", "AU02"]}
    value, lo, hi = stats.run_intervals(stats.subject_table(p, auc=False),
                                        stats.CISettings(resamples=2000))["f1"]
    loop_rng, subj, means = np.random.default_rng(5), keys["subject"], []
    for _ in range(2000):
        rows = np.concatenate([np.flatnonzero(subj == s)
                               for s in loop_rng.choice(np.unique(subj), subjects)])
        f1 = [au_metrics(y[rows, a], d[rows, a])["f1"] for a in range(2)]
        if not np.isnan(f1).any():
            means.append(np.mean(f1))
    assert 0.5 < len(means) / 2000 < 0.8       # AU02 undefined in (8/9)^9 = 35 % of draws
    want = np.percentile(means, [2.5, 97.5])
    assert value[-1] == pytest.approx(np.mean([value[0], value[1]]))
    assert lo[-1] == pytest.approx(want[0], abs=0.02) and hi[-1] == pytest.approx(want[1], abs=0.02)
    assert hi[-1] < 0.85                       # not AU01's F1 alone


def test_decisions_equal_to_the_labels_give_f1_one_with_a_zero_width_interval():
    p = simulated()
    p["decisions"] = (p["labels"] == 1).astype(np.int8)
    value, lo, hi = stats.run_intervals(stats.subject_table(p))["f1"]
    assert np.all(value == 1.0) and np.all(lo == 1.0) and np.all(hi == 1.0)


def test_two_identical_runs_differ_by_exactly_zero_with_p_one():
    p = simulated()
    q = {k: (v[::-1] if isinstance(v, np.ndarray) else v) for k, v in p.items()}  # frames reordered
    a, b, notes = stats.paired_tables(p, q)
    c = stats.compare_tables(a, b)
    assert np.all(c["diff"] == 0) and np.all(c["lo"] == 0) and np.all(c["hi"] == 0)
    assert np.all(c["p"] == 1.0) and c["exact"] and c["subjects"] == 9 and not notes
    assert "exact, all 512 swaps" in c["test"]


def test_a_real_difference_is_found_and_its_sign_kept():
    p = simulated(skill=3.0)
    q = simulated(seed=7, skill=0.3, labels=p["labels"])
    c = stats.compare_tables(*stats.paired_tables(p, q)[:2])
    assert c["diff"][-1] > 0.1 and c["lo"][-1] > 0 and c["p"][-1] <= 2 / 512 + 1e-12
    assert stats.verdict(c["diff"][-1], c["p"][-1], 0.05) == "holds"
    assert stats.verdict(-c["diff"][-1], c["p"][-1], 0.05) == "reversed"


def test_pairs_of_runs_that_differ_only_by_noise_are_called_different_about_5_percent():
    """Over many simulated pairs of equally good runs (two independent noisy detectors on the
    same labels), the paired test at alpha 0.05 rejects in about 5 % of pairs."""
    rng = np.random.default_rng(2024)
    settings = stats.CISettings()
    rejected, n_pairs = 0, 240
    for i in range(n_pairs):
        p = simulated(seed=int(rng.integers(1 << 30)), frames=20)
        q = simulated(seed=int(rng.integers(1 << 30)), frames=20, labels=p["labels"])
        a, b, _ = stats.paired_tables(p, q)
        pvalues, _ = stats.permutation_pvalues(a, b, "f1", settings)
        rejected += pvalues[-1] < settings.alpha
    assert 0.02 <= rejected / n_pairs <= 0.09, rejected / n_pairs


def test_holm_and_benjamini_hochberg_against_a_hand_worked_case():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # Holm: sorted 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> 0.06 (monotone)
    assert np.allclose(stats.holm(p)[:4], [0.03, 0.06, 0.06, 0.02]) and np.isnan(stats.holm(p)[4])
    # BH: p_(i) m / i = 0.02, 0.02, 0.04, 0.04 (already monotone from the top)
    assert np.allclose(stats.benjamini_hochberg(p)[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])  # 0.5 x 2 = 1.0; 0.9 lifted to it


def test_intensity_intervals_and_comparison_of_icc():
    p = simulated(intensity=True)
    found = stats.run_intervals(stats.subject_table(p))
    for metric in ("icc", "pearson", "mae"):
        value, lo, hi = found[metric]
        assert np.all(lo <= value + 1e-12) and np.all(value <= hi + 1e-12) and np.all(hi > lo)
    a, b, _ = stats.paired_tables(p, p)
    c = stats.compare_tables(a, b, metric="icc")
    assert np.all(c["diff"] == 0) and np.all(c["p"] == 1)


def test_runs_on_other_labels_are_not_compared():
    p = simulated()
    q = simulated(seed=4)
    with pytest.raises(StoreError, match="other labels"):
        stats.paired_tables(p, q, names=("a", "b"))


def test_the_expected_f1_of_guessing_at_the_base_rate_is_the_base_rate():
    rng = np.random.default_rng(0)
    for rate in (0.05, 0.2, 0.6):
        y = rng.uniform(size=400_000) < rate
        guess = rng.uniform(size=y.size) < rate
        assert au_metrics(y.astype(int), guess.astype(int))["f1"] == pytest.approx(
            float(stats.chance_f1(rate)), abs=0.01)
        assert float(stats.all_positive_f1(rate)) == pytest.approx(
            au_metrics(y.astype(int), np.ones(y.size, int))["f1"], abs=0.01)


def test_rank_stability_of_a_hand_worked_case():
    scores = [[0.50, 0.60, 0.55], [0.40, 0.65, 0.50], [0.30, 0.30, 0.30]]  # 3 runs x 3 repeats
    out = stats.rank_stability(scores)
    assert np.allclose(out["first"], [2 / 3, 1 / 3, 0])
    assert np.allclose(out["mean_rank"], [4 / 3, 5 / 3, 3])
    # rankings ABC, BAC, ABC: Spearman 0.5, 1, 0.5; Kendall 1/3, 1, 1/3
    assert out["spearman"] == pytest.approx(2 / 3) and out["spearman_min"] == pytest.approx(0.5)
    assert out["kendall"] == pytest.approx(5 / 9) and out["pairs"] == 3
    assert out["sd"][2] == 0 and out["mean"][0] == pytest.approx(0.55)


@pytest.mark.parametrize("level, resamples, flag", [(95, 1000, "--ci-level"), (0.95, 10, "--ci-resamples")])
def test_bad_settings_name_their_flag(level, resamples, flag):
    with pytest.raises(UsageError, match=flag):
        stats.check_settings(level, resamples)


def test_one_subject_has_no_interval_and_no_test():
    p = simulated(subjects=1)
    value, lo, hi = stats.run_intervals(stats.subject_table(p))["f1"]
    assert np.isfinite(value[-1]) and np.isnan(lo).all() and np.isnan(hi).all()
    c = stats.compare_tables(*stats.paired_tables(p, p)[:2])
    assert c["diff"][-1] == 0 and np.isnan(c["p"]).all()
    assert stats.verdict(0.3, float("nan"), 0.05) == "not decided"
