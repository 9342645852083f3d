"""The learning framework (classify/learn): a new task and a new method each cost one class and
one registry line, train through the shared loop and are applied by the run's saved model.

Faces: test_finetune's 48-px cache, where AU01 lights a block in the upper band and AU12
darkens one in the lower band (every other AU is a coin flip without a cue).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from classify.estimators import balance_indices, decide  # noqa: E402
from classify.infer import score_batches  # noqa: E402
from classify.learn.method import Method, Unit, UnitData, counts, trainable  # noqa: E402
from classify.task import OCCURRENCE, Settled, Task, register_task, unregister_task  # noqa: E402
from classify.training import TrainConfig  # noqa: E402
from featbench.core.facesource import FaceInput, FaceSource, balanced_rows  # noqa: E402
from featbench.core.metrics import au_metrics, nanmean  # noqa: E402
from featbench.core.modelfile import open_model  # noqa: E402
from featbench.core.workspace import Workspace  # noqa: E402
from test_finetune import FAST, SIZE, make_table, one_thread, write_cache  # noqa: E402,F401
from test_predict_nets import photo  # noqa: E402,F401

AUS = ["AU01", "AU12"]


# --- a toy task: one class -------------------------------------------------------------------
class Margin(Task):
    """Squared-hinge loss on +-1 targets, balanced accuracy chooses the epoch, the threshold
    halfway between the validation positives' and negatives' mean scores."""

    name = "margin"
    METRICS = ("f1", "accuracy", "precision", "recall", "balanced_accuracy")
    decision = "present when score > threshold (halfway between the class means)"

    def targets(self, table, aus):
        return table.labels(aus)

    def balance(self, y, rng):
        return balance_indices(y, rng)

    def loss(self, scores, y, weight=None, *, reduction="mean"):
        mask = (y >= 0).float()
        hinge = torch.clamp(1 - (2 * y.clamp(min=0).float() - 1) * scores.float(), min=0) ** 2
        total = (hinge * mask).sum()
        return total if reduction == "sum" else total / mask.sum().clamp(min=1)

    def validate(self, y, scores):
        y, s = np.asarray(y), np.asarray(scores)
        return {"val_score": nanmean(self.metrics(y[:, j], decide(s[:, j], 0.0))["balanced_accuracy"]
                                     for j in range(y.shape[1])),
                "val_loss": float(self.loss(torch.as_tensor(s), torch.as_tensor(y, dtype=torch.float32)))}

    def settle(self, y, scores, *, tune):
        out = Settled([], [])
        for j in range(np.asarray(y).shape[1]):
            yj, sj = np.asarray(y)[:, j], np.asarray(scores)[:, j] if len(y) else np.zeros(0)
            both = (yj == 1).any() and (yj == 0).any()
            thr = float((sj[yj == 1].mean() + sj[yj == 0].mean()) / 2) if both else 0.0
            out.thresholds.append(thr)
            out.values.append(self.metrics(yj, decide(sj, thr))["balanced_accuracy"])
        return out

    def decide(self, scores, thresholds):
        return decide(scores, thresholds)

    def metrics(self, y, decisions, scores=None):
        m = au_metrics(y, decisions, scores)
        keep = np.asarray(y) >= 0
        t, p = np.asarray(y)[keep] == 1, np.asarray(decisions)[keep] == 1
        rates = [np.mean(p[t] == 1) if t.any() else np.nan, np.mean(p[~t] == 0) if (~t).any() else np.nan]
        return {**m, "balanced_accuracy": nanmean(rates)}


@pytest.fixture
def margin():
    task = register_task(Margin())  # the task's registry line
    yield task
    unregister_task(task.name)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    table = make_table()
    return table, write_cache(root / "faces.h5", table)


def test_a_toy_task_trains_through_the_shared_loop_with_its_own_rules(faces, margin, tmp_path):
    from classify.finetune import FinetuneConfig, finetune_run, load_unit

    table, cache = faces
    ws = Workspace(tmp_path)
    res = finetune_run(ws, "synth", FinetuneConfig(**{**FAST, "head": "multilabel", "epochs": 4}),
                       table=table, aligned_path=cache, progress=False, task="margin")
    assert res["run"] == "timm-test_efficientnet__full__ft__ml-au1+12-margin"
    rows = {r["au"]: r for r in res["rows"]}
    assert rows["AU01"]["balanced_accuracy"] >= 0.9 and rows["AU12"]["balanced_accuracy"] >= 0.9
    model = open_model(res["models_dir"])
    assert model.manifest["task"] == "margin"
    # the threshold is the task's rule on the validation frames: the class means' midpoint
    net, settings = load_unit(res["models_dir"])
    val = np.flatnonzero(table.frames["subject"].isin(res["folds"][0]["validation"]).to_numpy())
    with FaceSource(cache, FaceInput.from_json(settings["face_input"]["model"])) as source:
        s = score_batches(net, (torch.from_numpy(f) for _, _, f in source.batches(val, 32)), device="cpu")
    y = table.labels(AUS)[val]
    want = [(s[y[:, j] == 1, j].mean() + s[y[:, j] == 0, j].mean()) / 2 for j in range(2)]
    got = [model.manifest["folds"][0]["thresholds"][au] for au in AUS]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert any(abs(t) > 1e-3 for t in got)  # not the occurrence default


# --- a toy method: one class -----------------------------------------------------------------
class Thumbnail(Method):
    """A linear layer over an 8 x 8 colour thumbnail of the face, one logit per AU."""

    kind = "thumb"

    def __init__(self, aligned_path, task=OCCURRENCE, *, side=8, epochs=25):
        super().__init__(task)
        self.aligned_path, self.side, self.epochs = aligned_path, side, epochs
        self.source = FaceSource(aligned_path, FaceInput("full", SIZE, resize_full=True))

    def unit_data(self, job):
        c = counts(job.y, job.rows)
        return UnitData(trainable(c), c)

    @staticmethod
    def thumbnail_net(side, outputs):
        return torch.nn.Sequential(_Thumb(side), torch.nn.Linear(3 * side * side, outputs))

    @classmethod
    def network(cls, settings, unit, state):
        net = cls.thumbnail_net(settings["side"], len(settings["units"][unit]["aus"]))
        net.load_state_dict(state)
        return net

    def build(self, job, data):
        torch.manual_seed(0)
        return self.thumbnail_net(self.side, len(job.unit.aus)), {"weights": "random:0"}

    def train_config(self, job):
        return TrainConfig(epochs=self.epochs, lr=0.05, optimizer="adam", patience=None, device="cpu")

    def train_batches(self, job, data):
        y, tr = job.y, job.rows["train"]

        def batches(epoch, rng):
            sample = rng.permutation(balanced_rows(y, tr, rng, self.task.balance))
            pw = self.pos_weight(y[sample])
            for _, idx, imgs in self.source.batches(sample, 32, min_size=2):
                yield torch.from_numpy(imgs), torch.from_numpy(y[idx].astype(np.float32)), pw

        return batches

    def scores(self, net, job, data, part):
        rows = job.rows["test" if part == "test" else "validation"]
        s = score_batches(net, (torch.from_numpy(f) for _, _, f in self.source.batches(rows, 64)),
                          device="cpu")
        return (None if part == "test" else job.y[rows]), s

    def settings_json(self):
        return {"side": self.side, "epochs": self.epochs}

    def model_settings(self, aus, splits, info):
        return {"side": self.side, "face_input": {"model": self.source.input.to_json()}}


class _Thumb(torch.nn.Module):
    def __init__(self, side):
        super().__init__()
        self.side = side

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).float() / 255
        return torch.nn.functional.adaptive_avg_pool2d(x, self.side).flatten(1)


def test_a_toy_method_trains_through_the_shared_loop_and_its_model_reproduces_the_run(faces, tmp_path):
    from classify.ensemble import read_predictions
    from classify.learn.facerun import face_plan, face_run
    from classify.learn.loop import unit_state

    table, cache = faces
    ws = Workspace(tmp_path)
    meta = {"model": "thumb", "region": "full", "clf": "thumb", "weights": "random:0",
            "protocol": "paper", "dataset": "synth"}
    method = Thumbnail(cache)
    res = face_run(method, face_plan(method, ws, table, run="thumb__full__thumb", aus=AUS, meta=meta,
                                     progress=False))
    f1 = {r["au"]: r["f1"] for r in res["rows"]}
    assert f1["AU01"] >= 0.9 and f1["AU12"] >= 0.9, f1
    # the saved model alone (modelfile: manifest + one tensor group) gives the run's decisions
    model = open_model(res["models_dir"])
    settings = model.manifest["settings"]
    net = Thumbnail.network(settings, "model", unit_state(model, "model"))
    pred = read_predictions(res["predictions"])
    where = {k: i for i, k in enumerate(table.keys().tolist())}
    rows = np.array([where[k] for k in pred["frames"].tolist()])
    with FaceSource(cache, FaceInput.from_json(settings["face_input"]["model"])) as source:
        s = score_batches(net, (torch.from_numpy(f) for _, _, f in source.batches(rows, 64)), device="cpu")
    thr = np.array([model.manifest["folds"][0]["thresholds"][au] for au in AUS])
    np.testing.assert_array_equal((s > thr).astype(np.int8), pred["decisions"])
    np.testing.assert_allclose(s, pred["scores"], rtol=1e-5, atol=1e-5)


# --- applied by featbench predict ------------------------------------------------------------
def _predict_cli(ws, run, photo_path, out):
    """``featbench predict PHOTO --run RUN`` as a user types it; return its CSV's one row."""
    import pandas as pd

    from featbench.app.cli import main

    assert main(["--workspace", str(ws.root), "predict", str(photo_path), "--run", run, "--out",
                 str(out), "--device", "cpu", "--quiet"]) == 0
    row = pd.read_csv(out)
    assert len(row) == 1 and row["success"].iloc[0] == 1
    return row.iloc[0]


def _aligned_photo(img, size):
    from featbench.core import faces as F

    lm = F.detect_landmarks(img)
    face, M = F.align_face(img, lm, size=size)
    return face[None], F.region_boxes(F.transform_points(lm, M), image_size=size)[None]


def test_featbench_predict_applies_the_toy_method_as_its_run_decided(faces, photo, tmp_path):
    from classify.kinds import register_kind, unregister_kind
    from classify.learn.facekind import face_kind
    from classify.learn.facerun import face_plan, face_run
    from classify.learn.loop import unit_state

    table, cache = faces
    ws = Workspace(tmp_path / "ws")
    meta = {"model": "thumb", "region": "full", "clf": "thumb", "weights": "random:0",
            "protocol": "paper", "dataset": "synth"}
    method = Thumbnail(cache, epochs=5)
    run = face_run(method, face_plan(method, ws, table, run="thumb__full__thumb", aus=AUS, meta=meta,
                                     progress=False))["run"]
    register_kind(face_kind("thumb", Thumbnail))  # the method's registry line
    try:
        row = _predict_cli(ws, run, photo[0], tmp_path / "p.csv")
    finally:
        unregister_kind("thumb")
    model = open_model(ws.models_dir("synth", run))
    settings = model.manifest["settings"]
    images, boxes = _aligned_photo(photo[1], SIZE)  # the run's faces were aligned at 48 px
    crops = FaceInput.from_json(settings["face_input"]["model"]).crops(images, boxes)
    net = Thumbnail.network(settings, "model", unit_state(model, "model"))
    s = score_batches(net, [torch.from_numpy(crops)], device="cpu")[0]
    for j, au in enumerate(AUS):
        thr = model.manifest["folds"][0]["thresholds"][au]
        assert row[f"{au}_p"] == pytest.approx(float(s[j]), rel=1e-5, abs=1e-6)
        assert row[f"{au}_c"] == int(s[j] > thr)


def test_featbench_predict_applies_a_toy_task_run_with_its_own_thresholds(faces, margin, photo,
                                                                         tmp_path):
    from classify.finetune import FinetuneConfig, finetune_run, load_unit
    from featbench.apply.runmodel import load_run

    table, cache = faces
    ws = Workspace(tmp_path / "ws")
    run = finetune_run(ws, "synth", FinetuneConfig(**{**FAST, "head": "multilabel", "epochs": 1}),
                       table=table, aligned_path=cache, progress=False, task="margin")["run"]
    assert load_run(ws, "synth", run).task is margin  # predict decides with the run's task
    row = _predict_cli(ws, run, photo[0], tmp_path / "p.csv")
    net, settings = load_unit(ws.models_dir("synth", run))
    images, boxes = _aligned_photo(photo[1], SIZE)
    crops = FaceInput.from_json(settings["face_input"]["model"]).crops(images, boxes)
    s = score_batches(net, [torch.from_numpy(crops)], device="cpu")[0]
    thresholds = open_model(ws.models_dir("synth", run)).manifest["folds"][0]["thresholds"]
    decided = margin.decide(s, np.array([thresholds[a] for a in AUS]))
    for j, au in enumerate(AUS):
        assert row[f"{au}_p"] == pytest.approx(float(s[j]), rel=1e-5, abs=1e-6)
        assert row[f"{au}_c"] == decided[j]
