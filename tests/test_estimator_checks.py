"""featbench's estimators keep scikit-learn's estimator contract (``check_estimator``)."""

import warnings

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import NotFittedError
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import check_estimator

from classify.estimators import ShrinkageLDA, ThresholdedClassifier
from classify.kinds import get_kind, list_kinds


def _frame_entries():
    """The run kinds with a per-frame classifier (sequence classifiers are torch networks; the
    intensity regressors fold their scaler into a weight vector)."""
    from classify.estimators import ClassifierSpec

    return [n for n in list_kinds(trained_by="classify")
            if isinstance(get_kind(n).estimator, ClassifierSpec)]


ESTIMATORS = [
    ShrinkageLDA(),
    ShrinkageLDA(priors=(0.5, 0.5)),
    ThresholdedClassifier(ShrinkageLDA()),
    ThresholdedClassifier(LinearSVC()),
    # what a run saves per AU: each run kind's pipeline with its threshold inside
    *[ThresholdedClassifier(get_kind(n).estimator.make()) for n in _frame_entries()],
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: repr(e).replace("\n", "").replace(" ", ""))
def test_check_estimator_passes(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and data-conversion warnings of the checks
        results = check_estimator(estimator, on_fail=None)
    failed = [f"{r['check_name']}: {r['exception']}" for r in results if r["status"] == "failed"]
    assert failed == []
    assert sum(r["status"] == "passed" for r in results) > 40  # the checks did run


def test_registry_has_frame_entries():
    # the parametrisation above must cover the built-in per-frame classifiers
    assert {"lda", "svm"} <= set(_frame_entries())


def test_shrinkage_lda_one_feature_matches_scikit_learn():
    # one feature: Ledoit-Wolf's delta is 0; the shrinkage is 0 (scikit-learn's rule), not nan
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = (rng.normal(size=60) + 2.0 * y)[:, None]
    ours = ShrinkageLDA().fit(X, y)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(X, y)
    assert np.all(np.isfinite(ours.coef_))
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-6)
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), rtol=1e-6)
    assert ours.n_features_in_ == 1


def test_bad_input_is_refused_with_the_contract_errors():
    lda = ShrinkageLDA()
    with pytest.raises(NotFittedError):
        lda.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Only binary classification"):
        lda.fit(np.random.default_rng(0).normal(size=(9, 3)), np.arange(9) % 3)
    X = np.random.default_rng(1).normal(size=(20, 3))
    y = np.arange(20) % 2
    lda.fit(X, y)
    with pytest.raises(ValueError, match="3 features"):
        lda.decision_function(X[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        lda.decision_function(np.where(np.eye(20, 3) == 1, np.nan, X))
    thr = ThresholdedClassifier(ShrinkageLDA())
    with pytest.raises(ValueError, match="Only binary classification"):
        thr.fit(X, np.arange(20) % 4)
    assert thr.fit(X, y).n_features_in_ == 3
