"""classify.registry: saved models reproduce their run; a new classifier is one entry."""

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from classify.estimators import ThresholdedClassifier
from classify.registry import (ClassifierSpec, check_clf, get_classifier, list_classifiers,
                               load_run_models, register_classifier, unregister_classifier)
from classify.run import classify_run
from featbench.core.errors import MissingRunError, UsageError
from featbench.core.workspace import Workspace

from test_classify import make_codes, make_table, write_features


def _test_codes(out, table, codes):
    """The codes (aligned with ``table``) of the predictions file's frames, in its order."""
    with h5py.File(out["predictions"], "r") as f:
        frames, decisions, scores = f["frames"][:], f["decisions"][:], f["scores"][:]
    idx = pd.MultiIndex.from_arrays([table.keys()[k] for k in ("subject", "video", "frame")])
    at = idx.get_indexer(pd.MultiIndex.from_arrays([frames[k] for k in ("subject", "video", "frame")]))
    return codes[at], decisions, scores


@pytest.mark.parametrize("clf", ["svm", "lda"])
def test_a_saved_model_loaded_alone_reproduces_the_runs_decisions(tmp_path, clf):
    ws, table = Workspace(tmp_path), make_table()
    codes = make_codes(table)
    write_features(ws, table, codes, regions=("full",))
    out = classify_run(ws, "synth", model="toy", clf=clf, tune_threshold=True, table=table,
                       progress=False, n_jobs=1)
    X, decisions, scores = _test_codes(out, table, codes)
    models = load_run_models(ws, "synth", out["run"])
    assert list(models) == ["paper"] and len(models["paper"]) == len(out["rows"])
    moved = 0
    for ai, row in enumerate(out["rows"]):
        model = models["paper"][row["au"]]
        assert model.threshold == pytest.approx(row["threshold"])
        np.testing.assert_array_equal(model.predict(X), decisions[:, ai])
        np.testing.assert_array_equal(model.decision_function(X).astype(np.float32), scores[:, ai])
        moved += int((model.predict(X) != (scores[:, ai] > 0)).sum())
    assert moved > 0  # the tuned thresholds change some decisions: the saved threshold matters


def test_models_saved_before_thresholds_were_kept_get_the_settings_threshold(tmp_path):
    import joblib

    ws, table = Workspace(tmp_path), make_table()
    write_features(ws, table, make_codes(table), regions=("full",))
    out = classify_run(ws, "synth", model="toy", clf="lda", tune_threshold=True, table=table,
                       progress=False, n_jobs=1, aus="AU01,AU04")
    for au in ("AU01", "AU04"):  # rewrite as the old format: the bare pipeline
        path = out["models_dir"] / f"{au}.joblib"
        joblib.dump(joblib.load(path).estimator_, path)
    models = load_run_models(ws, "synth", out["run"])["paper"]
    assert [models[r["au"]].threshold for r in out["rows"]] == [r["threshold"] for r in out["rows"]]
    with pytest.raises(MissingRunError, match="no saved models of run toy__full__svm"):
        load_run_models(ws, "synth", "toy__full__svm")


def test_thresholded_classifier_follows_the_estimator_contract():
    from sklearn.base import clone

    from classify.estimators import make_lda

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] > 0).astype(int)
    est = ThresholdedClassifier(make_lda(), threshold=1.5)
    assert clone(est).get_params()["threshold"] == 1.5
    assert est.fit(X, y) is est and not hasattr(est.estimator, "classes_")  # fits a clone
    s = est.decision_function(X)
    np.testing.assert_array_equal(est.predict(X), (s.astype(np.float32) > 1.5).astype(int))


def test_unknown_and_planned_classifiers_say_what_to_do():
    assert {"lda", "svm"} <= set(list_classifiers())
    with pytest.raises(UsageError, match="did you mean 'svm'"):
        check_clf("svn")
    assert get_classifier("lstm").needs_sequences  # the LSTM is an entry too (classify/lstm.py)
    with pytest.raises(ValueError, match="already registered"):
        register_classifier(ClassifierSpec(name="svm"))


# --- adding a classifier: one module (below) + one registry line -------------------------------
class CentroidClassifier(ClassifierMixin, BaseEstimator):
    """Toy: the score is the projection on the difference of the class means, shrunk to 0."""

    def __init__(self, shrink=0.0):
        self.shrink = shrink

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        m1, m0 = X[y == 1].mean(axis=0), X[y == 0].mean(axis=0)
        self.coef_ = (1 - self.shrink) * (m1 - m0)
        self.intercept_ = -self.coef_ @ (m1 + m0) / 2
        return self

    def decision_function(self, X):
        return np.asarray(X) @ self.coef_ + self.intercept_


def make_centroid(*, shrink=0.0, **_):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("clf", CentroidClassifier(shrink))])


CENTROID = ClassifierSpec(name="centroid", make=make_centroid, search_space={"shrink": (0.0, 0.5)},
                          default_params={"shrink": 0.0}, help="toy: nearest class mean")


@pytest.fixture
def toys():
    register_classifier(CENTROID)  # the one registry line (an _ENTRIES line in classify/registry.py)
    yield
    unregister_classifier(CENTROID.name)


def test_a_new_classifier_is_one_module_and_one_registry_line(tmp_path, toys):
    ws, table = Workspace(tmp_path), make_table()
    codes = make_codes(table)
    write_features(ws, table, codes, regions=("full",))
    out = classify_run(ws, "synth", model="toy", clf="centroid", table=table, progress=False,
                       n_jobs=1)
    assert out["run"] == "toy__full__centroid"
    rows = {r["au"]: r for r in out["rows"]}
    assert rows["AU01"]["f1"] == 1.0 and 0.3 < rows["AU02"]["auc"] < 0.7
    assert set(pd.read_csv(out["csv"])["shrink"].dropna()) <= {0.0, 0.5}  # its search space, chosen
    X, decisions, _ = _test_codes(out, table, codes)
    model = load_run_models(ws, "synth", out["run"])["paper"]["AU01"]
    np.testing.assert_array_equal(model.predict(X), decisions[:, 0])

