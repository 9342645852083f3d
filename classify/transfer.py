"""Method B: two-stage expression -> AU transfer (PROTOCOL.md; seed ``000_*.txt``).

Stage 1 (:func:`run_stage1`)
    A registry backbone + one linear layer, cross-entropy over the expression classes found in
    the data. K-fold subject-independent cross-validation (``featbench.core.splits`` ``kfold:K``:
    every subject is tested exactly once; 20 % of each fold's training subjects choose the
    epoch) gives the accuracy per fold, mean +- std and a confusion matrix summed over the
    folds' test images. Then the backbone is trained on every subject for the folds' median
    best epoch count and saved for stage 2.
Stage 2 (:func:`run_stage2`)
    That backbone + an MLP with two hidden layers (ReLU, dropout), one logit per AU, per-AU
    binary cross-entropy (``pos_weight="auto"``: the task's rule, negatives / positives of each
    AU on the training frames clipped to [0.1, 10], for Aff-Wild2's imbalance; AU labels of -1
    are masked out of the loss).
    Trained on the data set's training split, the epoch is chosen by mean F1 at 0.5 on the
    validation subjects, then each AU's threshold by F1 on the validation frames only
    (ABAW's ``own`` protocol: test = the Validation_Set, as the paper reports it). F1 is
    reported at 0.5 (``f1_05``) and at the tuned thresholds (``f1`` with ``threshold``).
Control
    The same stage 2 from the backbone's starting weights, without stage 1 (run tag
    ``nostage1``), so the report answers "does the expression stage help?".

Both stages are one method, :class:`TransferMethod` (:mod:`classify.learn.method`): the
network, full aligned faces from the face source (:mod:`featbench.core.facesource`: the
network's first layer resizes them; flipped at random in training), scores through the one
inference path. Stage 1 trains with the :class:`~classify.task.Expression` task, stage 2
with the occurrence task (masked BCE, the one positive-weight rule, F1, thresholds settled on
validation) through the shared fold x unit loop (:mod:`classify.learn.loop`) and the one run
writer (:mod:`classify.learn.writer`). Every network trains through
:func:`classify.training.fit` (checkpoint per epoch and resume, AMP + channels-last on CUDA);
nothing loads a whole data set into memory.

The network outputs logits; thresholds are tuned on them (logit 0 = probability 0.5) and
stored, with the predictions file's scores, as probabilities.

Outputs::

    results/<expr-ds>/models/<backbone>__full__expr/   stage 1: folds.csv, confusion.csv,
        backbone.safetensors, stage1.json, per-fold logs and curves (checkpoints/ until it
        finishes: a finished stage 1 is reused by a rerun with the same identity)
    results/<ds>/<backbone>__full__transfer[__nostage1].csv, summary.csv row (clf transfer),
    results/<ds>/predictions/<run>.h5, results/<ds>/models/<run>/ model.safetensors,
        backbone.safetensors, manifest.json, settings.json, model.log.csv, model.png

``backbone.safetensors`` holds the whole backbone's weights with the registry's key names, so
it loads with ``featbench extract --model <backbone> --weights backbone.safetensors``.
"""

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from featbench.core.align import AlignedFaces, ensure_aligned
from featbench.core.errors import MissingRunError, UsageError
from featbench.core.facesource import FaceInput, FaceSource, draw_augmentation
from featbench.core.identity import RunKey, WeightsId
from featbench.core.metrics import au_metrics, nanmean
from featbench.core.modelfile import open_model
from featbench.core.results import run_table
from featbench.core.splits import make_splits
from featbench.core.workspace import atomic_write_text, run_lock

from classify.estimators import decide
from classify.ft_net import check_input_size
from classify.learn import store
from classify.infer import score_batches
from classify.learn.loop import save_units, unit_state, write_model
from classify.learn.method import Job, Method, Unit, UnitData
from classify.learn.pool import run_local, run_units
from classify.task import EXPRESSION, OCCURRENCE, get_task
from classify.learn.writer import replace_folder
from classify.netkinds import TRANSFER
from classify.training import TrainConfig
from classify.transfer_net import StartWeights, build_net, full_state_dict, network_of
from extract.encoders import autocast_dtype, resolve_device
from extract.registry import get_spec
from extract.weights import file_sha256, parse_weights, weights_identity

EXPR_CLF = "expr"
CLF = "transfer"
CONTROL_TAG = "nostage1"


@dataclass(frozen=True)
class TransferSettings:
    """What makes a transfer run what it is (saved in settings.json and checkpoint identities).

    Attributes
    ----------
    backbone : str
        Registry name (``resnet50``, ``tv:resnet18``, ``tv:mobilenet_v2``...).
    weights : str
        The backbone's starting weights: ``imagenet``, ``random:S`` or a file path.
    input_size : int or None
        Side the faces are resized to (None: the backbone's own, 224 for ResNet-50).
    folds : int
        Stage 1's K.
    hidden : tuple of int
        Stage 2's MLP hidden layers (the paper: two).
    pos_weight : {"auto", "none"}
    epochs : (int, int)
        At most this many epochs in stage 1 and stage 2.
    lr, batch_size, patience, seed, device, flip, dropout
    task : {"occurrence", "intensity"}
        What stage 2 learns (:mod:`classify.intensity_task`: the head regresses 0-5).
    """

    backbone: str = "resnet50"
    weights: str = "imagenet"
    input_size: object = None
    folds: int = 5
    hidden: tuple = (512, 256)
    pos_weight: str = "auto"
    epochs: tuple = (10, 10)
    lr: float = 3e-4
    batch_size: int = 32
    patience: object = 3
    seed: int = 0
    device: str = "auto"
    flip: bool = True
    dropout: float = 0.3
    task: str = "occurrence"

    def __post_init__(self):
        get_task(self.task)  # an unknown task's name says so now
        if self.pos_weight not in ("auto", "none"):
            raise UsageError(f"--pos-weight must be auto or none, got {self.pos_weight!r}")
        if int(self.folds) < 2:
            raise UsageError(f"--folds must be at least 2, got {self.folds}")
        if len(self.hidden) < 1 or any(int(h) < 1 for h in self.hidden):
            raise UsageError(f"--hidden must be positive sizes such as 512,256, got {self.hidden}")
        if int(self.batch_size) < 2:
            raise UsageError(f"--batch-size must be at least 2, got {self.batch_size}")
        if self.input_size is not None and int(self.input_size) < 32:
            raise UsageError(f"--input-size must be at least 32, got {self.input_size}")

    def train_config(self, stage):
        """The :class:`TrainConfig` of stage 1 or 2 (Adam, the shared loop's settings)."""
        return TrainConfig(epochs=int(self.epochs[stage - 1]), lr=float(self.lr), optimizer="adam",
                           weight_decay=1e-4, patience=self.patience, seed=int(self.seed),
                           device=self.device)

    def to_json(self):
        d = asdict(self)
        d["hidden"], d["epochs"] = list(self.hidden), list(self.epochs)
        if not get_task(d["task"]).identity():  # occurrence runs' identities as before tasks
            del d["task"]
        return d


def parse_sizes(text, *, flag, count=None):
    """Parse ``"512,256"`` into a tuple of ints (``count``: exactly that many, one repeats)."""
    try:
        vals = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if count and len(vals) == 1:
        vals = vals * count
    if not vals or (count and len(vals) != count):
        raise UsageError(f"{flag} takes {count or 'one or more'} comma-separated integers, got {text!r}")
    return vals


def _faces(table, workspace, progress):
    faces = AlignedFaces(ensure_aligned(table, workspace, progress=progress))
    if len(faces) != len(table):
        raise UsageError(f"{faces.path}: {len(faces)} rows for {len(table)} frames; rerun featbench align")
    return faces


# --- the method ----------------------------------------------------------------------------------
class TransferMethod(Method):
    """A registry backbone + a fresh head on full aligned faces (both stages; see the module
    docstring). ``start``: the backbone's :class:`StartWeights`; ``head``: the head's layer sizes
    after the code (stage 1: ``(classes,)``; stage 2: ``hidden + (AUs,)``)."""

    kind = CLF
    tune = True
    probabilities = True
    #: the targets' dtype in a batch (stage 1: class indices; stage 2: float per AU)
    targets_dtype = np.float32

    def __init__(self, settings, faces_path, start, head, task=OCCURRENCE, *, stage=2):
        super().__init__(task)
        self.stage = stage
        self.settings, self.start, self.head = settings, start, tuple(head)
        self.spec = start.spec
        self.source = FaceSource(faces_path, FaceInput("full", self.input_size, resize_full=False))
        self.device = resolve_device(settings.device)
        self.dtype = autocast_dtype(self.device)

    @property
    def input_size(self):
        return int(self.settings.input_size or self.spec.input_size)

    def unit_data(self, job):
        c, cols = self.task.unit_counts(job.y, job.rows)
        pw = self.pos_weight(job.y[job.rows["train"]]) if self.settings.pos_weight == "auto" else None
        return UnitData(cols, c, {"pos_weight": pw})

    def build(self, job, data=None):
        net, weights_id = build_net(self.spec, self.start, self.head, seed=self.settings.seed,
                                    input_size=self.settings.input_size,
                                    dropout=self.settings.dropout if len(self.head) > 1 else 0.0)
        return net, {"weights": weights_id}

    def train_config(self, job):
        config = self.settings.train_config(self.stage)
        return replace(config, **job.config) if job.config else config

    def train_batches(self, job, data=None):
        """Shuffled batches of the training rows (a last batch of one face is dropped: batch
        norm needs two), flipped at random; targets and the positive weight beside."""
        import torch

        rows, y, bs = np.asarray(job.rows["train"], np.int64), job.y, int(self.settings.batch_size)
        pw = None if data is None else data.extra["pos_weight"]

        def batches(epoch, rng):
            order = rows[rng.permutation(len(rows))]
            aug = (draw_augmentation(rng, len(order), self.input_size, flip_only=True)
                   if self.settings.flip else None)
            for _, idx, imgs in self.source.batches(order, bs, aug=aug, min_size=2):
                yield (torch.from_numpy(imgs),
                       torch.from_numpy(np.ascontiguousarray(y[idx], dtype=self.targets_dtype)), pw)

        return batches

    def scores(self, net, job, data, part):
        """Logits of the validation rows (the epoch; the thresholds) or the test rows."""
        import torch

        rows = job.rows["test" if part == "test" else "validation"]
        batches = (torch.from_numpy(f) for _, _, f in self.source.batches(rows, 64))
        s = score_batches(net, batches, device=self.device, dtype=self.dtype,
                          width=self.head[-1])
        return (None if part == "test" else job.y[rows]), s

    # --- stage 2's records (the one writer) -----------------------------------------------------
    stage1 = None

    def f1_05(self, record):
        """Per AU the test F1 at logit 0 (probability 0.5), for a task whose scores are logits
        (occurrence); None otherwise."""
        if self.task.probability is None:
            return None
        test = record.test_rows[0]
        return {au: au_metrics(record.labels[test, j], decide(record.by[(0, au)]["scores"], 0.0))["f1"]
                if record.by[(0, au)]["fit"] else float("nan") for j, au in enumerate(record.aus)}

    def row_extra(self, record, au):
        f1 = self.f1_05(record)
        return {} if f1 is None else {"f1_05": f1[au]}

    def result_meta(self, record):
        """Stage 2's columns of summary.csv: the start weights' identity, F1 at 0.5, stage 1
        (the control: none), the chosen epoch."""
        res, control = record.results[0], self.stage1 is None
        f1 = self.f1_05(record)
        return {"weights": str(res.info.get("weights", record.plan.meta["weights"])),
                "mean_f1_05": nanmean(f1.values()) if f1 else float("nan"),
                "stage1": "" if control else self.stage1["run"],
                "stage1_accuracy": float("nan") if control else self.stage1["mean_accuracy"],
                "best_epoch": res.fit.get("best_epoch", 0)}

    def record_settings(self, record):
        return self.stage2_info(record)

    def stage2_info(self, record):
        """What stage 2's settings.json and result say: data, split, positive weights, epochs,
        thresholds (as probabilities for logits), weights, stage 1, device, F1 (or ICC)."""
        import torch

        res, job, plan = record.results[0], record.jobs[0], record.plan
        table, split, rows, aus = plan.table, plan.splits[0], job.rows, record.aus
        prob, mean = self.task.probability, run_table(record.rows, columns=self.task.COLUMNS)[0][-1]
        pw = self.unit_data(job).extra["pos_weight"]
        return {"run": record.run, "clf": CLF, "dataset": table.dataset, "control": self.stage1 is None,
                "aus": aus, "protocol": plan.protocol,
                "split": {"train": list(split.train), "validation": list(split.validation),
                          "test": list(split.test)},
                "frames": {k: int(len(v)) for k, v in rows.items()},
                "skipped": {**{k: int(v) for k, v in table.skipped.items()},
                            "frames without a face": int((~np.asarray(record.inputs.has_input, bool)).sum())},
                "pos_weight": None if pw is None else dict(zip(aus, pw.tolist())),
                "best_epoch": res.fit.get("best_epoch", 0), "resumed_from": res.fit.get("resumed_from", 0),
                "history": res.fit.get("history", []),
                "thresholds": dict(zip(aus, (float(prob(t)) if prob is not None else t
                                             for t in res.thresholds))),
                "weights": record.meta["weights"], "trained_weights": str(WeightsId.finetuned(record.run)),
                "stage1": None if self.stage1 is None else {k: self.stage1[k] for k in (
                    "run", "mean_accuracy", "std_accuracy", "backbone_sha256")},
                "settings": self.settings.to_json(), "device": res.fit.get("device"),
                "precision": res.fit.get("precision"), "torch": torch.__version__,
                "f1": mean["f1"], "f1_05": record.meta.get("mean_f1_05"),
                "seconds": record.meta.get("seconds"), "task": self.task.name,
                **{k: mean[k] for k in ("icc",) if k in self.task.COLUMNS}}


# --- stage 1 -------------------------------------------------------------------------------------
def expression_folds(table, k, *, seed=0):
    """Return the ``kfold:K`` splits of the expression set's subjects (each tested once)."""
    if k > len(table.subjects):
        raise UsageError(f"--folds {k}: the expression set has only {len(table.subjects)} subjects")
    return make_splits(table, f"kfold:{int(k)}", seed=seed)


def stage1_run(settings):
    """The RunKey of stage 1's outputs (``<backbone>__full__expr``)."""
    return RunKey(settings.backbone, "full", EXPR_CLF, _tags(settings))


def _tags(settings):
    return (f"s{settings.seed}",) if settings.seed else ()


def run_stage1(workspace, table, settings, *, progress=True, scheduler=None):
    """Cross-validate and train stage 1 on the expression set ``table``; save the backbone.

    Returns
    -------
    dict
        ``run``, ``classes``, ``folds`` (per-fold rows), ``mean_accuracy``, ``std_accuracy``,
        ``confusion`` (classes x classes, rows = true), ``backbone`` (Path), ``weights`` (the
        starting weights' identity), ``seconds``.
    """
    import torch

    t0 = time.time()
    spec = get_spec(settings.backbone)
    _check_torch(spec)
    classes = list(table.notes.get("classes") or sorted(set(table.frames["expression"])))
    faces = _faces(table, workspace, progress)
    y = EXPRESSION.targets(table, classes)
    usable = np.asarray(faces.valid, bool) & (y >= 0)
    run = stage1_run(settings)
    out_dir = workspace.models_dir(table.dataset, str(run))
    out_dir.mkdir(parents=True, exist_ok=True)
    method = TransferMethod(settings, faces.path, StartWeights(spec, settings.weights), (len(classes),),
                            task=EXPRESSION, stage=1)
    ident = {"stage": 1, "settings": settings.to_json(), "data": table.fingerprint(),
             "classes": classes}
    done = _finished_stage1(out_dir, ident, spec, settings.weights)
    if done is not None:
        if progress:
            print(f"stage 1 {run}: done already with these settings and data "
                  f"({out_dir / 'stage1.json'}); its backbone is reused", file=sys.stderr)
        return done
    splits = expression_folds(table, settings.folds, seed=settings.seed)
    method.targets_dtype = np.int64  # class indices
    work = out_dir.with_name(f".{run}.partial")
    folds, confusion, res = _stage1_folds(method, splits, table, y, usable, ident, work, progress,
                                          scheduler)
    if res is None:
        return None  # a torchrun rank other than 0: rank 0 trains the final fit and writes
    final, epochs = _stage1_final(method, folds, y, usable, ident, work, progress)
    accs = np.array([f["accuracy"] for f in folds], dtype=float)
    result = {"run": str(run), "dataset": table.dataset, "backbone": settings.backbone,
              "weights": str(final.info["weights"]), "classes": classes, "folds": folds,
              "mean_accuracy": float(np.nanmean(accs)), "std_accuracy": float(np.nanstd(accs)),
              "confusion": confusion.tolist(), "final_epochs": epochs,
              "images": int(usable.sum()), "subjects": len(table.subjects),
              "settings": settings.to_json(), "seconds": round(time.time() - t0, 1),
              "device": str(final.fit.get("device")), "torch": torch.__version__,
              "identity": _plain_json(ident)}
    return _write_stage1(out_dir, work, spec, res + [final], result)


def _stage1_final(method, folds, y, usable, ident, work, progress):
    """Train the backbone stage 2 starts from, on every subject for the folds' median epoch
    count; return ``(its unit's result, the epochs)``."""
    epochs = max(1, int(np.median([f["best_epoch"] for f in folds])))
    every = {"train": np.flatnonzero(usable), "validation": np.zeros(0, np.int64),
             "test": np.zeros(0, np.int64)}
    final = run_local(method, [Job(0, "all", Unit("model", ("expression",)), every, y, "all",
                                   {**ident, "fold": "all", "epochs": epochs},
                                   config={"epochs": epochs, "patience": None})],
                      work=work, progress=progress)[0]  # one network: here, on the writing rank
    return final, epochs


def _write_stage1(out_dir, work, spec, results, result):
    """Swap stage 1's folder in whole (``results``: the folds' units and the final fit's, last):
    backbone, tables, logs, settings.json; return ``result`` with the backbone's file and sha256."""
    final = results[-1]

    def fill(tmp):
        save_units(tmp, work, results)
        path = store.write_tensors(tmp / "backbone.safetensors", full_state_dict(spec, final.net.backbone))
        result.update(backbone_sha256=file_sha256(path))
        _write_stage1_tables(tmp, result)
        store.write_json(tmp / "stage1.json", {**result, "backbone_file": str(out_dir / path.name)})
        # beside backbone.safetensors: codes extracted with it are stored as finetuned:<run> sha256:...
        store.write_json(tmp / "settings.json", {"run": result["run"], "clf": EXPR_CLF, **result,
                                                 "backbone_file": str(out_dir / path.name)})

    replace_folder(out_dir, fill)
    # the folds' and the final fit's units (network + checkpoints) only served a resume: a
    # finished stage 1 is reused whole (_finished_stage1)
    shutil.rmtree(work, ignore_errors=True)
    return {**result, "backbone_file": str(out_dir / "backbone.safetensors")}


def _plain_json(obj):
    """``obj`` as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(obj, default=str))


def _finished_stage1(out_dir, ident, spec, weights):
    """Stage 1's saved result in ``out_dir`` when it was made with identity ``ident`` from the
    same starting weights (their identity, a file's sha256 in it, as the result records it), and
    its backbone file is the one it wrote (same sha256); else None (trained again)."""
    try:
        info = json.loads((out_dir / "stage1.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("identity") != _plain_json(ident):
        return None
    if info.get("weights") != weights_identity(spec, parse_weights(weights, spec)):
        return None
    backbone = out_dir / "backbone.safetensors"  # where it is now, should the workspace move
    if not backbone.is_file() or file_sha256(backbone) != info.get("backbone_sha256"):
        return None
    return {**info, "backbone_file": str(backbone)}


def _stage1_folds(method, splits, table, y, usable, ident, work, progress, scheduler=None):
    """Train and test stage 1 on each fold through the one loop; return the fold rows, the
    summed confusion matrix and the folds' unit results.

    The jobs run where every run's do (:func:`classify.learn.pool.run_units`: this process,
    Dask, torchrun's ranks), but are built here and the folder is written by :func:`run_stage1`,
    not by the driver's job builder and writer, because stage 1 is not a run of AUs: its
    target is one column of expression classes (the job builder slices per-unit AU columns of
    a frames x AUs label array), its units are named ``fold1``... in the identities a finished
    stage 1 is reused by, and what it keeps is per-fold accuracy, a confusion matrix and a
    backbone for stage 2 -- no per-AU predictions, table, summary row or run model, which is
    what the one writer writes. Its folder is swapped in whole (the writer's
    :func:`~classify.learn.writer.replace_folder`), settings.json inside the swap.
    """
    k = method.head[0]
    jobs = []
    for i, split in enumerate(splits, 1):
        rows = {p: np.flatnonzero(split.mask(table, p) & usable) for p in ("train", "validation", "test")}
        jobs.append(Job(i, f"fold{i}", Unit("model", ("expression",)), rows, y, f"fold{i}",
                        {**ident, "fold": i}))
    results = run_units(method, jobs, work=work, progress=progress, scheduler=scheduler)
    if results is None:
        return None, None, None
    folds, confusion = [], np.zeros((k, k), np.int64)
    for job, res, split in zip(jobs, results, splits):
        test = job.rows["test"]
        pred = EXPRESSION.decide(res.test_scores)
        np.add.at(confusion, (y[test], pred), 1)
        acc = EXPRESSION.metrics(y[test], pred)["accuracy"]
        folds.append({"fold": job.fold, "accuracy": acc, "test_images": int(len(test)),
                      "train_images": int(len(job.rows["train"])),
                      "val_images": int(len(job.rows["validation"])),
                      "best_epoch": res.fit.get("best_epoch", 0),
                      "seconds": res.fit.get("train_seconds", 0.0),
                      "test_subjects": " ".join(split.test)})
        if progress:
            print(f"stage 1 fold {job.fold}/{len(splits)}: accuracy {acc:.3f} on {len(test)} images "
                  f"of {len(split.test)} subjects (epoch {res.fit.get('best_epoch', 0)})", file=sys.stderr)
    return folds, confusion, results


def _write_stage1_tables(out_dir, result):
    cols = ("fold", "accuracy", "test_images", "train_images", "val_images", "best_epoch", "seconds",
            "test_subjects")
    lines = [",".join(cols)]
    for f in result["folds"]:
        lines.append(",".join(f"{f[c]:.4f}" if isinstance(f[c], float) and c == "accuracy" else str(f[c])
                              for c in cols))
    lines.append(f"mean,{result['mean_accuracy']:.4f},,,,,,")
    lines.append(f"std,{result['std_accuracy']:.4f},,,,,,")
    atomic_write_text(out_dir / "folds.csv", "\n".join(lines) + "\n")
    classes = result["classes"]
    rows = ["true\\predicted," + ",".join(classes)]
    rows += [f"{c}," + ",".join(str(v) for v in r) for c, r in zip(classes, result["confusion"])]
    atomic_write_text(out_dir / "confusion.csv", "\n".join(rows) + "\n")


def load_stage1(workspace, expr_dataset, settings):
    """Return stage 1's saved result for ``settings`` (MissingRunError naming the command)."""
    run = stage1_run(settings)
    path = workspace.models_dir(expr_dataset, str(run)) / "stage1.json"
    if not path.is_file():
        raise MissingRunError(f"{path}: no stage-1 backbone for {settings.backbone} on {expr_dataset} "
                              f"(make it with: featbench transfer --stage 1 --backbone {settings.backbone})")
    info = json.loads(path.read_text())
    saved = info.get("settings", {})
    for key in ("weights", "input_size"):
        if saved.get(key) != settings.to_json().get(key):
            raise UsageError(f"{path}: stage 1 was trained with --{key.replace('_', '-')} "
                             f"{saved.get(key)}, not {settings.to_json().get(key)}; rerun --stage 1 "
                             "or pass the same setting")
    return info


# --- stage 2 -------------------------------------------------------------------------------------
def stage2_run(settings, *, control=False):
    """The RunKey of a stage-2 run: ``<backbone>__full__transfer[__<tags>]``.

    Tags: ``nostage1`` (the control), ``pwnone`` (unweighted BCE), ``s<seed>``, then the task
    when it is not occurrence (``intensity``).
    """
    tags = ((CONTROL_TAG,) if control else ()) + (("pwnone",) if settings.pos_weight == "none" else ())
    task_tag = TRANSFER.task_tag(get_task(settings.task))
    tags += _tags(settings) + ((task_tag,) if task_tag else ())
    return RunKey(settings.backbone, "full", CLF, tags)


def stage2_rows(table, faces, aus, protocol="own", *, seed=0):
    """Return ``(split, {"train"|"validation"|"test": rows})`` of the AU set's usable frames.

    A usable frame has an aligned face and at least one AU label that is not -1 (ABAW's
    unannotated frames are never trained on, tuned on or scored).
    """
    split = make_splits(table, protocol, seed=seed)[0]
    labels = table.labels(aus)
    usable = np.asarray(faces.valid, bool) & (labels >= 0).any(axis=1)
    rows = {p: np.flatnonzero(split.mask(table, p) & usable) for p in ("train", "validation", "test")}
    for part, idx in rows.items():
        if not len(idx):
            raise UsageError(f"{table.dataset}: no usable {part} frames in the {protocol} split")
    return split, rows


def default_protocol(table):
    """``own`` when the data set has its own split (Aff-Wild2), else ``paper`` (DISFA)."""
    return "own" if (table.frames["split"] != "").any() else "paper"


def run_stage2(workspace, table, settings, *, stage1=None, aus=None, protocol=None, progress=True,
               scheduler=None):
    """Fine-tune for AU occurrence from stage 1's backbone (or, ``stage1=None``, the control).

    Parameters
    ----------
    workspace : Workspace
    table : FrameTable
        The AU data set (Aff-Wild2 layout, or DISFA-style with ``protocol="paper"``).
    settings : TransferSettings
    stage1 : dict, optional
        :func:`run_stage1`'s (or :func:`load_stage1`'s) result: start from its backbone. None:
        the control, from ``settings.weights``.
    aus : list of str, optional
        Default: every AU the data set labels.

    Returns
    -------
    dict
        ``run``, ``csv``, ``predictions``, ``f1``, ``f1_05``, ``thresholds``, ``best_epoch``,
        ``weights``, ``seconds``...
    """
    from classify.driver import FaceInputs, execute
    from classify.plan import PlanData, RunPlan

    spec = get_spec(settings.backbone)
    _check_torch(spec)
    aus = list(aus or table.aus)
    protocol = protocol or default_protocol(table)
    task = get_task(settings.task).at_threshold(table.label_threshold)
    task.check_table(table)
    faces = _faces(table, workspace, progress)
    split, _ = stage2_rows(table, faces, aus, protocol, seed=settings.seed)  # every part has frames
    key = stage2_run(settings, control=stage1 is None)
    meta = {"model": settings.backbone, "region": "full", "clf": CLF, "weights": str(settings.weights),
            "protocol": protocol, "dataset": table.dataset}
    plan = RunPlan(workspace=workspace, data=PlanData(table, (split,), protocol=protocol), kind=TRANSFER, task=task,
                   model=settings.backbone, region="full", protocol=protocol, aus=tuple(aus),
                   seed=settings.seed, key=key, meta=meta, inputs="faces", options=settings,
                   common={"labelled_only": True}, progress=progress, scheduler=scheduler)

    def make_method(plan, inputs):
        method = TransferMethod(settings, faces.path, _stage2_start(spec, settings, stage1),
                                tuple(settings.hidden) + (len(aus),), task=task)
        method.stage1 = stage1
        return method

    out = execute(plan, FaceInputs(faces.path), make_method, identity=_stage2_identity)
    if out is None:
        return None
    info = out["record"].method.stage2_info(out["record"])
    return {**info, "csv": out["csv"], "predictions": out["predictions"], "per_au": out["rows"]}


def _stage2_identity(method, inputs):
    plan = inputs.plan
    return {"stage": 2, "settings": method.settings.to_json(), "data": plan.table.fingerprint(),
            "aus": list(plan.aus), "protocol": plan.protocol, "start": method.start.identity()}


def save_stage2(folder, record):
    """The ``transfer`` kind's ``save``: the network's group and the backbone's (which ``featbench
    extract --weights backbone.safetensors`` reads: :mod:`featbench.core.modelfile`), each
    unit's log and curves."""
    method, plan, results = record.method, record.plan, record.results
    work = plan.workspace.models_dir(plan.dataset, plan.run).with_name(f".{plan.run}.partial")
    record.units = save_units(folder, work, results)
    net, settings, aus = results[0].net, method.settings, record.aus
    backbone = {} if net is None else {"backbone": full_state_dict(method.spec, net.backbone)}
    thr = [float(t) for t in results[0].thresholds]
    prob = method.task.probability
    write_model(folder, record, extra=backbone,
                preprocessing={"model": settings.backbone, "input_size": method.input_size,
                               "regions": {a: "full" for a in aus},
                               "alignment": method.source.faces.settings},
                backbone=settings.backbone, input_size=settings.input_size,
                hidden=list(settings.hidden), dropout=settings.dropout,
                face_input={"model": method.source.input.to_json()},
                start_weights=record.meta["weights"],
                trained_weights=str(WeightsId.finetuned(record.run)), logit_thresholds=thr,
                thresholds=[float(prob(t)) for t in thr] if prob is not None else thr)


def _stage2_start(spec, settings, stage1):
    """Return the StartWeights of stage 2: stage 1's backbone, or (``stage1=None``, the control)
    ``settings.weights``."""
    if stage1 is None:
        return StartWeights(spec, settings.weights)
    return StartWeights(spec, stage1["backbone_file"],
                        identity=str(WeightsId.finetuned(stage1["run"], sha256=stage1["backbone_sha256"])))


def load_model(path, *, device="cpu"):
    """Load stage 2's network alone (a run folder or its export): return ``(TransferNet in eval
    mode, the model's settings)``.

    The settings hold ``aus``, ``thresholds`` (probabilities) and ``logit_thresholds``: a face
    is called present for an AU when its logit is > that AU's logit threshold.
    """
    model = open_model(path)
    settings = {**model.manifest["settings"], "aus": model.manifest["aus"]}
    return network_of(settings, unit_state(model, "model")).to(device).eval(), settings


# --- the whole method ---------------------------------------------------------------------------
def transfer_run(workspace, *, expr_table=None, au_table=None, settings=TransferSettings(),
                 stage="both", control=True, aus=None, protocol=None, progress=True, scheduler=None):
    """Run stage 1, stage 2 and the control as asked; return ``{"stage1", "stage2", "control"}``
    (None on a torchrun rank other than 0: rank 0 writes each stage, the others wait for it)."""
    from classify.learn.pool import barrier, is_writer

    if stage not in ("1", "2", "both"):
        raise UsageError(f"--stage must be 1, 2 or both, got {stage!r}")
    out, kw = {}, dict(progress=progress, scheduler=scheduler)
    if stage in ("1", "both"):
        with run_lock(workspace.models_dir(expr_table.dataset, str(stage1_run(settings)))):
            out["stage1"] = run_stage1(workspace, expr_table, settings, **kw)
        barrier()  # stage 2 starts from the backbone rank 0 wrote
    if stage in ("2", "both"):
        s1 = out.get("stage1") or load_stage1(workspace, expr_table.dataset, settings)
        with run_lock(workspace.models_dir(au_table.dataset, str(stage2_run(settings)))):
            out["stage2"] = run_stage2(workspace, au_table, settings, stage1=s1, aus=aus,
                                       protocol=protocol, **kw)
        if control:
            with run_lock(workspace.models_dir(au_table.dataset,
                                               str(stage2_run(settings, control=True)))):
                out["control"] = run_stage2(workspace, au_table, settings, stage1=None, aus=aus,
                                            protocol=protocol, **kw)
    return out if is_writer() else None


def format_result(out):
    """Return the human summary printed by ``featbench transfer``."""
    lines = []
    s1 = out.get("stage1")
    if s1:
        accs = " ".join(f"{f['accuracy']:.3f}" for f in s1["folds"])
        lines.append(f"stage 1 {s1['backbone']} ({WeightsId.parse(s1['weights']).describe()}) on "
                     f"{s1['dataset']}: {len(s1['classes'])} classes, {s1['images']} images of "
                     f"{s1['subjects']} subjects; fold accuracy {accs}; mean "
                     f"{s1['mean_accuracy']:.3f} ± {s1['std_accuracy']:.3f} ({s1['seconds']:.0f} s)")
        lines.append(f"  backbone -> {s1['backbone_file']}")
    for key, label in (("stage2", "stage 2"), ("control", "control (no stage 1)")):
        r = out.get(key)
        if r:
            score = (f"mean ICC {r['icc']:.3f}, F1 of rounded intensity >= 2 {r['f1']:.3f}"
                     if "icc" in r else
                     f"mean F1 {r['f1_05']:.3f} at 0.5, {r['f1']:.3f} tuned")
            lines.append(f"{label} {r['run']} on {r['dataset']} ({r['protocol']}; start "
                         f"{WeightsId.parse(r['weights']).describe()}): {score}; epoch "
                         f"{r['best_epoch']} ({r['seconds']:.0f} s) -> {r['csv']}")
    if out.get("stage2") and out.get("control") and "icc" in out["stage2"]:
        d = out["stage2"]["icc"] - out["control"]["icc"]
        lines.append(f"stage 2 - control: {d:+.3f} mean ICC")
    elif out.get("stage2") and out.get("control"):
        d = out["stage2"]["f1"] - out["control"]["f1"]
        d05 = out["stage2"]["f1_05"] - out["control"]["f1_05"]
        verdict = ("helps" if d > 0 and d05 > 0 else "does not help" if d <= 0 and d05 <= 0
                   else "helps at one threshold and not the other")
        lines.append(f"stage 2 - control: {d05:+.3f} F1 at 0.5, {d:+.3f} tuned: the expression "
                     f"stage {verdict} here")
    return "\n".join(lines)


# --- helpers -------------------------------------------------------------------------------------
def _sigmoid(x):
    return float(1.0 / (1.0 + math.exp(-float(x)))) if np.isfinite(x) else float("nan")


def _sigmoids(x):
    """Probabilities of logits (arrays or a number), as the predictions file stores them."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _check_torch(spec):
    if spec.kind != "torch":
        raise UsageError(f"{spec.name} is not a trainable network; transfer needs a CNN backbone "
                         "(resnet50, tv:resnet18, tv:mobilenet_v2...; featbench models lists all)")


__all__ = ["TransferSettings", "TransferMethod", "run_stage1", "run_stage2", "transfer_run",
           "format_result", "load_model", "expression_folds", "stage2_rows", "full_state_dict",
           "build_net"]


def check_start(settings):
    """Build the backbone with its start weights once and pass one face through it at
    ``settings.input_size``: weights that do not load or fit, and an input size the network
    cannot take (CNN-F's fc6 needs 224-pixel faces), fail here in seconds, before any data
    is read or made.

    Raises
    ------
    UsageError, WeightsError
        One line each.
    """
    import torch

    spec = get_spec(settings.backbone)
    _check_torch(spec)
    check_input_size(settings.input_size)
    weights = settings.weights if settings.weights not in (None, "", "auto") else "random:0"
    net, _ = build_net(spec, StartWeights(spec, weights), (1,), input_size=settings.input_size)
    size = int(settings.input_size or spec.input_size)
    try:
        with torch.inference_mode():
            net.eval()(torch.zeros((1, size, size, 3), dtype=torch.uint8))
    except RuntimeError as exc:  # a shape error of the first linear layer, or an empty pool
        raise UsageError(f"--input-size {size}: {spec.name} cannot take {size}-pixel faces "
                         f"({str(exc).splitlines()[0][:120]}); use --input-size "
                         f"{spec.input_size}, or a backbone that takes any size "
                         "(resnet50, tv:resnet18...)") from None
