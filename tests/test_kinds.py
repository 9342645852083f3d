"""classify.kinds: one registry of run kinds; saved runs reproduce their decisions; a new kind is
one class and one registry line, trained and then applied by featbench predict."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from classify.basekinds import estimator_kind
from classify.estimators import ClassifierSpec, ThresholdedClassifier
from classify.kinds import (classifier_kind, get_kind, list_kinds, load_scorer, register_kind,
                            unregister_kind)
from classify.run import classify_run
from featbench.core.errors import MissingRunError, UsageError
from featbench.core.identity import WeightsId
from featbench.core.modelfile import ModelFormatError, open_model
from featbench.core.workspace import Workspace

from test_classify import make_codes, make_table, write_features

#: the toy network's seeded-random weights: the identity in the codes keys of its runs
RANDOM0 = WeightsId.random(0)


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
    assert sorted(p.name for p in out["models_dir"].iterdir()) == sorted(
        ["manifest.json", "settings.json"] + [f"{r['au']}.safetensors" for r in out["rows"]])
    mf = open_model(out["models_dir"])
    man = mf.manifest
    assert (man["kind"], man["run"], man["weights"], man["task"]) == (clf, out["run"], "random:0",
                                                                     "occurrence")
    assert man["training_data"] == {"dataset": "synth", "synthetic": True}
    assert man["preprocessing"]["model"] == "toy" and man["preprocessing"]["input_size"] == 224
    model = load_scorer(mf)
    s, d, _ = model.score({("toy", RANDOM0, "full"): X})
    np.testing.assert_array_equal(d, decisions)
    np.testing.assert_array_equal(s, scores)
    moved = 0
    for ai, row in enumerate(out["rows"]):
        est, thr = model.folds[0][row["au"]]
        assert isinstance(est, ThresholdedClassifier) and thr == pytest.approx(row["threshold"])
        assert man["folds"][0]["thresholds"][row["au"]] == thr
        np.testing.assert_array_equal(est.predict(X), decisions[:, ai])
        moved += int((est.predict(X) != (scores[:, ai] > 0)).sum())
    assert moved > 0  # the tuned thresholds change some decisions: the saved threshold matters


def test_a_saved_model_names_only_classes_its_kind_loads(tmp_path):
    """The manifest says which class each step is; a class the kind does not name is refused."""
    ws, table = Workspace(tmp_path), make_table()
    write_features(ws, table, make_codes(table), regions=("full",))
    out = classify_run(ws, "synth", model="toy", clf="lda", table=table, progress=False, n_jobs=1,
                       aus="AU01,AU04")
    path = out["models_dir"] / "manifest.json"
    man = json.loads(path.read_text())
    assert [s["class"] for s in man["settings"]["models"]["AU01"]["steps"]] == ["StandardScaler",
                                                                               "ShrinkageLDA"]
    man["settings"]["models"]["AU01"]["steps"][1]["class"] = "Popen"
    path.write_text(json.dumps(man))
    from featbench.core.errors import StoreError

    with pytest.raises(StoreError, match="class 'Popen', which this kind does not load"):
        load_scorer(open_model(out["models_dir"]))


def test_a_run_folder_of_pickles_is_refused_unopened(tmp_path):
    """A crafted AU01.joblib in a run folder (featbench 0.1's layout) is never unpickled."""
    from featbench.apply.runmodel import load_run

    from test_modelfile import _Payload
    import joblib

    ws = Workspace(tmp_path)
    folder = ws.models_dir("synth", "toy__full__svm")
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    joblib.dump(_Payload(marker), folder / "AU01.joblib")
    (folder / "settings.json").write_text(json.dumps({"run": "toy__full__svm", "clf": "svm"}))
    with pytest.raises(ModelFormatError, match="train the run again"):
        load_run(ws, "synth", "toy__full__svm")
    assert not marker.exists()
    with pytest.raises(MissingRunError, match="toy__full__svm"):
        load_run(ws, "synth", "toy__full__lda")


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


def test_every_kind_is_one_entry_and_unknown_names_say_what_to_do():
    assert list_kinds()[:6] == ["lda", "svm", "lstm", "ft", "transfer", "vote"]
    assert list_kinds(trained_by="classify") == ["lda", "svm", "lstm", "ridge", "svr"]
    for name in list_kinds():
        kind = get_kind(name)
        assert kind.name == name and callable(kind.load) and callable(kind.saver())
        assert callable(kind.trainer())  # how it trains: the function its command calls
    assert get_kind("lstm").method is not None and get_kind("svm").estimator.search_space
    assert get_kind("ft").inputs == "faces" and get_kind("vote").inputs == "runs"
    with pytest.raises(UsageError, match="did you mean 'svm'"):
        get_kind("svmm")
    with pytest.raises(UsageError, match="not trained by featbench classify"):
        classifier_kind("vote")
    with pytest.raises(ValueError, match="already registered"):
        register_kind(get_kind("svm"))
    assert [list_kinds(trained_by=c) for c in ("finetune", "transfer", "ensemble")] == [
        ["ft"], ["transfer"], ["vote"]]  # what each command trains, said by the kinds


def test_a_registry_selects_by_what_its_entries_say_and_names_functions_lazily():
    import pickle

    from featbench.core.registry import Registry, lazy

    reg = Registry("thing")
    reg.lazy("a", "no_such_module_anywhere:A", family="x")
    reg.lazy("b", "featbench.core.aus:REGIONS", family="y")
    reg.add("c", type("Thing", (), {"family": "x"})())
    assert reg.names() == ["a", "b", "c"]
    assert reg.names(family="x") == ["a", "c"]  # "a" is never imported: its module does not exist
    with pytest.raises(ValueError, match="does not have"):
        reg.get("b")  # the entry says what its object is not
    f = lazy("featbench.core.aus:au_name")
    assert f(1) == "AU01" and f == lazy("featbench.core.aus:au_name")
    assert pickle.loads(pickle.dumps(f))(2) == "AU02"


# --- a new kind: one class (below) + one registry line -----------------------------------------
class CentroidClassifier(ClassifierMixin, BaseEstimator):
    """Toy: the score is the projection on the difference of the class means, shrunk to 0."""

    def __init__(self, shrink=0.0):
        self.shrink = shrink

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        m1, m0 = X[y == 1].mean(axis=0), X[y == 0].mean(axis=0)
        self.coef_ = (1 - self.shrink) * (m1 - m0)
        self.intercept_ = np.float64(-self.coef_ @ (m1 + m0) / 2)
        return self

    def decision_function(self, X):
        return np.asarray(X) @ self.coef_ + self.intercept_


def make_centroid(*, shrink=0.0, **_):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("clf", CentroidClassifier(shrink))])


def _centroid_spec():
    from sklearn.preprocessing import StandardScaler

    return ClassifierSpec(name="centroid", make=make_centroid, classes=(StandardScaler, CentroidClassifier),
                          search_space={"shrink": (0.0, 0.5)}, default_params={"shrink": 0.0},
                          help="toy: nearest class mean")


@pytest.fixture
def toy_kind():
    register_kind(estimator_kind(_centroid_spec()))  # the one registry line
    yield
    unregister_kind("centroid")


def test_a_new_kind_trains_through_classify_and_reloads(tmp_path, toy_kind):
    ws, table = Workspace(tmp_path), make_table()
    codes = make_codes(table)
    write_features(ws, table, codes, regions=("full",))
    out = get_kind("centroid").trainer()(ws, "synth", model="toy", clf="centroid", table=table,
                                         progress=False, n_jobs=1)
    assert out["run"] == "toy__full__centroid"
    rows = {r["au"]: r for r in out["rows"]}
    assert rows["AU01"]["f1"] == 1.0 and 0.3 < rows["AU02"]["auc"] < 0.7
    assert set(pd.read_csv(out["csv"])["shrink"].dropna()) <= {0.0, 0.5}  # its search space, chosen
    X, decisions, scores = _test_codes(out, table, codes)
    model = load_scorer(open_model(out["models_dir"]))
    s, d, _ = model.score({("toy", RANDOM0, "full"): X})
    np.testing.assert_array_equal(d, decisions)
    np.testing.assert_array_equal(s, scores)


def _hog_workspace(tmp_path):
    """HOG-sized random codes for the toy table (AU01 on dim 0), stored as hog's feature file."""
    from extract.encoders import create_encoder
    from extract.store import open_store

    ws, table = Workspace(tmp_path / "ws"), make_table(n_frames=6)
    dims = int(create_encoder("hog").dims)
    rng = np.random.default_rng(3)
    codes = rng.normal(size=(len(table), dims)).astype(np.float32)
    codes[:, 0] += 3 * (2 * table.frames["AU01"].to_numpy() - 1)
    with open_store(ws.features_path("synth", "hog"), keys=table.keys(), model="hog", layer="HOG",
                    weights="none", input_size=112, dims=dims, overwrite=True) as w:
        w.write("full", 0, codes)
    return ws, table


def test_a_new_kind_is_applied_by_featbench_predict(tmp_path, toy_kind):
    """One class + one registry line: trained on (HOG-sized) codes, then applied to a real face
    by ``featbench predict`` (and from its export), equal to the saved model on that face."""
    from PIL import Image
    from skimage import data

    from extract.encoders import create_encoder
    from featbench.app.cli import main
    from featbench.core import faces

    ws, table = _hog_workspace(tmp_path)
    out = classify_run(ws, "synth", model="hog", clf="centroid", table=table, progress=False,
                       n_jobs=1, aus="AU01,AU04")
    img = data.astronaut()
    Image.fromarray(img).save(tmp_path / "face.png")
    csv, exported = tmp_path / "face.csv", tmp_path / "centroid.safetensors"
    assert main(["--workspace", str(ws.root), "predict", str(tmp_path / "face.png"), "--run",
                 out["run"], "--out", str(csv), "--quiet"]) == 0
    assert main(["--workspace", str(ws.root), "export", out["run"], "--out", str(exported)]) == 0
    assert main(["predict", str(tmp_path / "face.png"), "--model", str(exported), "--out",
                 str(tmp_path / "again.csv"), "--quiet"]) == 0
    df, again = pd.read_csv(csv), pd.read_csv(tmp_path / "again.csv")
    assert list(df["success"]) == [1]
    pd.testing.assert_frame_equal(df, again)
    face, _ = faces.align_face(img, faces.detect_landmarks(img))
    code = create_encoder("hog")(face[None])
    model = load_scorer(open_model(out["models_dir"]))
    for au in ("AU01", "AU04"):
        est, thr = model.folds[0][au]
        score = float(est.decision_function(code)[0])
        assert df[f"{au}_p"].iloc[0] == pytest.approx(score, rel=1e-6, abs=1e-9)
        assert df[f"{au}_c"].iloc[0] == int(score > thr)
