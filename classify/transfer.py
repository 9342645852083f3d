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
    binary cross-entropy (``pos_weight="auto"``: negatives / positives of each AU on the
    training frames, for Aff-Wild2's imbalance; AU labels of -1 are masked out of the loss).
    Trained on the data set's training split, the epoch is chosen by mean F1 at 0.5 on the
    validation subjects, then each AU's threshold by F1 on the validation frames only
    (ABAW's ``own`` protocol: test = the Validation_Set, as the paper reports it). F1 is
    reported at 0.5 (``f1_05``) and at the tuned thresholds (``f1`` with ``threshold``).
Control
    The same stage 2 from the backbone's starting weights, without stage 1 (run tag
    ``nostage1``), so the report answers "does the expression stage help?".

Every network trains through :func:`classify.training.fit` (checkpoint per epoch and resume,
AMP + channels-last on CUDA). Images stream from the aligned-face cache in batches; nothing
loads a whole data set into memory.

The network outputs logits; thresholds are tuned on them (logit 0 = probability 0.5) and
stored, with the predictions file's scores, as probabilities.

Outputs::

    results/<expr-ds>/models/<backbone>__full__expr/   stage 1: folds.csv, confusion.csv,
        backbone.pt, stage1.json, per-fold logs and curves, checkpoints/
    results/<ds>/<backbone>__full__transfer[__nostage1].csv, summary.csv row (clf transfer),
    results/<ds>/predictions/<run>.h5, results/<ds>/models/<run>/ model.pt, backbone.pt,
        settings.json, log.csv, curves.png, checkpoints/

``backbone.pt`` holds the whole network's state dict with the registry's key names, so it
loads with ``featbench extract --model <backbone> --weights backbone.pt``.
"""

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from torch import nn  # this module is imported by the command function only: --help stays fast

from featbench.core.align import AlignedFaces, ensure_aligned
from featbench.core.errors import MissingRunError, UsageError
from featbench.core.identity import RunKey, WeightsId
from featbench.core.metrics import au_metrics, nanmean
from featbench.core.results import write_predictions, write_run
from featbench.core.splits import make_splits
from featbench.core.workspace import atomic_path, atomic_write_text, run_lock

from classify.estimators import best_threshold
from classify.training import TrainConfig, autocast_dtype, fit, plot_history, to_device
from extract.encoders import create_preprocess
from extract.registry import get_spec
from extract.weights import file_sha256, load_network

EXPR_CLF = "expr"
CLF = "transfer"
CONTROL_TAG = "nostage1"
POS_WEIGHT_MAX = 50.0


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

    def __post_init__(self):
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


# --- networks ----------------------------------------------------------------------------------
class StartWeights:
    """A backbone's starting point: its registry spec, the weights to load and their identity."""

    def __init__(self, spec, weights, identity=None):
        self.spec, self.weights = spec, weights
        self._identity = identity

    def load(self):
        """Return ``(module, preprocess_mean, identity)``: the trainable truncated backbone."""
        net = load_network(self.spec, self.weights)
        for p in net.module.parameters():
            p.requires_grad_(True)
        return net.module, net.mean, self._identity or net.weights_id


def build_net(spec, start, head_sizes, *, input_size=None, dropout=0.0, seed=0):
    """Return ``(TransferNet, weights identity)``: preprocess + backbone + a fresh head.

    ``head_sizes`` are the head's layer sizes after the backbone's code: ``(classes,)`` is
    stage 1's one linear layer, ``(512, 256, aus)`` stage 2's two-hidden-layer MLP.
    """
    import torch

    backbone, mean, identity = start.load()
    spec_in = replace(spec, input_size=int(input_size)) if input_size else spec
    layers, width = [], spec.dims
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) + 7919)  # the head's init: seeded, the same for every start
        for i, size in enumerate(head_sizes):
            if i:
                layers += [nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
            layers.append(nn.Linear(width, int(size)))
            width = int(size)
    net = TransferNet(create_preprocess(spec_in, mean=mean), backbone, nn.Sequential(*layers))
    return net, str(WeightsId.parse(identity))  # the one string form (file sha256:...)


class TransferNet(nn.Module):
    """uint8 NHWC faces -> logits: preprocess, backbone (to its code), head."""

    def __init__(self, preprocess, backbone, head):
        super().__init__()
        self.preprocess, self.backbone, self.head = preprocess, backbone, head

    def forward(self, x):
        return self.head(self.backbone(self.preprocess(x)))


def load_model(path, *, device="cpu"):
    """Load a stage-2 ``model.pt`` alone: return ``(TransferNet in eval mode, saved dict)``.

    The dict holds ``aus``, ``thresholds`` (probabilities) and ``logit_thresholds``: a face is
    called present for an AU when its logit is > that AU's logit threshold.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    spec = get_spec(state["backbone"])
    net, _ = build_net(spec, StartWeights(spec, "random:0"), tuple(state["hidden"]) + (len(state["aus"]),),
                       input_size=state["input_size"], dropout=state.get("dropout", 0.0))
    net.load_state_dict(state["state_dict"])
    return net.to(device).eval(), state


def full_state_dict(spec, backbone):
    """Return ``backbone``'s weights keyed as the registry's whole network names them.

    The truncated backbone of an fc6 network is a new ``Sequential`` whose keys (``0.0.weight``)
    are not the network's (``features.0.weight``); a file ``featbench extract --weights PATH``
    reads needs the latter. The mapping is found on a probe network, by tensor identity.
    """
    import torch

    with torch.device("meta"):
        probe = spec.constructor()
    full = {id(t): k for k, t in list(probe.named_parameters()) + list(probe.named_buffers())}
    code = spec.truncate(probe)
    names = {k: full.get(id(t)) for k, t in list(code.named_parameters()) + list(code.named_buffers())}
    out = {}
    for key, value in backbone.state_dict().items():
        name = names.get(key)
        if name is None:
            raise RuntimeError(f"{spec.name}: backbone key {key!r} has no name in the full network")
        out[name] = value.detach().to("cpu", copy=True)
    return out


def _sha(path):
    return file_sha256(path)


# --- data ----------------------------------------------------------------------------------------
def _faces(table, workspace, progress):
    faces = AlignedFaces(ensure_aligned(table, workspace, progress=progress))
    if len(faces) != len(table):
        raise UsageError(f"{faces.path}: {len(faces)} rows for {len(table)} frames; rerun featbench align")
    return faces


def _chunks(rows, size):
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def train_batches(faces, rows, targets, *, batch_size, flip):
    """Return ``batches(epoch, rng)``: shuffled ``(faces uint8 NHWC, targets)`` of ``rows`` only.

    A last batch of one image is dropped (batch norm needs two).
    """
    import torch

    rows = np.asarray(rows, dtype=np.int64)

    def batches(epoch, rng):
        order = rows[rng.permutation(len(rows))]
        for idx in _chunks(order, batch_size):
            if len(idx) < 2:
                continue
            x = torch.from_numpy(faces.read(idx))
            if flip:
                m = torch.from_numpy(rng.random(len(idx)) < 0.5)
                x[m] = x[m].flip(2)
            yield x, torch.from_numpy(np.ascontiguousarray(targets[idx]))

    return batches


def predict_logits(model, faces, rows, *, batch_size=64, device=None):
    """Return the logits of ``rows`` (k, outputs) float32, in the order given, in eval mode."""
    import torch

    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    dtype = autocast_dtype(str(device))
    with torch.inference_mode():
        for idx in _chunks(np.asarray(rows, dtype=np.int64), batch_size):
            x = to_device(torch.from_numpy(faces.read(idx)), device)
            with torch.autocast(device_type=str(device).split(":")[0], dtype=dtype,
                                enabled=dtype is not None):
                out.append(model(x).float().cpu().numpy())
    model.train(was)
    width = model.head[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


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


def _stage1_fit(model, faces, y, train, val, settings, ckpt, log, identity, progress, epochs=None):
    """Train one stage-1 network through the shared loop; return its FitResult."""
    import torch
    import torch.nn.functional as F

    config = settings.train_config(1)
    if epochs is not None:  # the final fit on every subject: a fixed epoch count
        config = replace(config, epochs=int(epochs), patience=None)

    def step_loss(net, batch):
        x, t = batch
        return F.cross_entropy(net(x), t)

    def evaluate(net):
        if not len(val):
            return {"val_score": float("nan")}
        logits = torch.from_numpy(predict_logits(net, faces, val))
        t = torch.from_numpy(y[val])
        return {"val_loss": float(F.cross_entropy(logits, t)),
                "val_score": float((logits.argmax(1) == t).float().mean())}

    result = fit(model, train_batches=train_batches(faces, train, y, batch_size=settings.batch_size,
                                                    flip=settings.flip),
                 step_loss=step_loss, evaluate=evaluate, config=config, checkpoint_dir=ckpt,
                 identity=identity, log_path=log, progress=progress)
    plot_history(result.history, log.with_suffix(".png"), title=log.stem)
    return result


def run_stage1(workspace, table, settings, *, progress=True):
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
    y = table.frames["expression"].map({c: i for i, c in enumerate(classes)}).fillna(-1)
    y = y.to_numpy(dtype=np.int64)
    usable = faces.valid & (y >= 0)
    run = stage1_run(settings)
    out_dir = workspace.models_dir(table.dataset, str(run))
    out_dir.mkdir(parents=True, exist_ok=True)
    start = StartWeights(spec, settings.weights)
    ident = {"stage": 1, "settings": settings.to_json(), "data": table.fingerprint(),
             "classes": classes}
    folds, confusion, best_epochs = [], np.zeros((len(classes), len(classes)), np.int64), []
    splits = expression_folds(table, settings.folds, seed=settings.seed)
    weights_id = None
    for i, split in enumerate(splits, 1):
        tf = time.time()
        train, val, test = (np.flatnonzero(split.mask(table, p) & usable)
                            for p in ("train", "validation", "test"))
        model, weights_id = build_net(spec, start, (len(classes),), input_size=settings.input_size,
                                      seed=settings.seed)
        res = _stage1_fit(model, faces, y, train, val, settings, out_dir / "checkpoints" / f"fold{i}",
                          out_dir / f"fold{i}.log.csv", {**ident, "fold": i}, progress)
        pred = predict_logits(model, faces, test).argmax(1)
        np.add.at(confusion, (y[test], pred), 1)
        acc = float(np.mean(pred == y[test])) if len(test) else float("nan")
        best_epochs.append(res.best_epoch)
        folds.append({"fold": i, "accuracy": acc, "test_images": int(len(test)),
                      "train_images": int(len(train)), "val_images": int(len(val)),
                      "best_epoch": res.best_epoch, "seconds": round(time.time() - tf, 1),
                      "test_subjects": " ".join(split.test)})
        if progress:
            print(f"stage 1 fold {i}/{len(splits)}: accuracy {acc:.3f} on {len(test)} images "
                  f"of {len(split.test)} subjects (epoch {res.best_epoch})", file=sys.stderr)
        del model
    # the backbone for stage 2: every subject, the folds' median epoch count
    epochs = max(1, int(np.median(best_epochs)))
    model, _ = build_net(spec, start, (len(classes),), input_size=settings.input_size, seed=settings.seed)
    every = np.flatnonzero(usable)
    _stage1_fit(model, faces, y, every, np.zeros(0, np.int64), settings, out_dir / "checkpoints" / "all",
                out_dir / "all.log.csv", {**ident, "fold": "all", "epochs": epochs}, progress,
                epochs=epochs)
    backbone_path = out_dir / "backbone.pt"
    _save_torch(backbone_path, full_state_dict(spec, model.backbone))
    accs = np.array([f["accuracy"] for f in folds], dtype=float)
    result = {"run": str(run), "dataset": table.dataset, "backbone": settings.backbone,
              "weights": str(weights_id), "classes": classes, "folds": folds,
              "mean_accuracy": float(np.nanmean(accs)), "std_accuracy": float(np.nanstd(accs)),
              "confusion": confusion.tolist(), "final_epochs": epochs,
              "images": int(usable.sum()), "subjects": len(table.subjects),
              "backbone_file": str(backbone_path), "backbone_sha256": _sha(backbone_path),
              "settings": settings.to_json(), "seconds": round(time.time() - t0, 1),
              "device": str(res.device), "torch": torch.__version__}
    _write_stage1_tables(out_dir, result)
    _write_json(out_dir / "stage1.json", result)
    # beside backbone.pt: codes extracted with it are stored as finetuned:<run> sha256:...
    _write_json(out_dir / "settings.json", {"run": str(run), "clf": EXPR_CLF, **result})
    return result


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

    Tags: ``nostage1`` (the control), ``pwnone`` (unweighted BCE), ``s<seed>``.
    """
    tags = ((CONTROL_TAG,) if control else ()) + (("pwnone",) if settings.pos_weight == "none" else ())
    tags += _tags(settings)
    return RunKey(settings.backbone, "full", CLF, tags)


def pos_weights(labels):
    """Per-AU BCE weight of positives: negatives / positives on the training frames.

    Clipped to [1, :data:`POS_WEIGHT_MAX`]; an AU without a positive gets 1.
    """
    pos = (labels == 1).sum(0).astype(float)
    neg = (labels == 0).sum(0).astype(float)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1.0, POS_WEIGHT_MAX).astype(np.float32)


def masked_bce(logits, targets, pos_weight=None):
    """Per-AU binary cross-entropy averaged over labelled entries (targets -1 contribute nothing)."""
    import torch.nn.functional as F

    mask = (targets >= 0).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0).float(),
                                              pos_weight=pos_weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def tune_thresholds(labels, logits):
    """Return each AU's logit threshold with the best F1 on these (validation) frames.

    ``labels`` (n, k) of 1 / 0 / -1 (ignored); an AU without a positive keeps logit 0
    (probability 0.5).
    """
    out = np.zeros(labels.shape[1])
    for j in range(labels.shape[1]):
        keep = labels[:, j] >= 0
        out[j] = best_threshold(labels[keep, j], logits[keep, j])
    return out


def mean_f1(labels, logits, thresholds=None):
    """Mean over AUs (nan ignored) of F1 of ``logits > thresholds`` (default 0: probability 0.5)."""
    thr = np.zeros(labels.shape[1]) if thresholds is None else np.asarray(thresholds)
    return nanmean(au_metrics(labels[:, j], (logits[:, j] > thr[j]).astype(int))["f1"]
                   for j in range(labels.shape[1]))


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


def run_stage2(workspace, table, settings, *, stage1=None, aus=None, protocol=None, progress=True):
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
    import torch

    t0 = time.time()
    spec = get_spec(settings.backbone)
    _check_torch(spec)
    aus = list(aus or table.aus)
    protocol = protocol or default_protocol(table)
    faces = _faces(table, workspace, progress)
    split, rows = stage2_rows(table, faces, aus, protocol, seed=settings.seed)
    labels = table.labels(aus).astype(np.int64)
    control = stage1 is None
    run = str(stage2_run(settings, control=control))
    out_dir = workspace.models_dir(table.dataset, run)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, weights_id = build_net(spec, _stage2_start(spec, settings, stage1),
                                  tuple(settings.hidden) + (len(aus),),
                                  input_size=settings.input_size, dropout=settings.dropout,
                                  seed=settings.seed)
    pw = pos_weights(labels[rows["train"]]) if settings.pos_weight == "auto" else None
    identity = {"stage": 2, "settings": settings.to_json(), "data": table.fingerprint(),
                "aus": aus, "protocol": protocol, "start": str(weights_id)}
    result = _stage2_fit(model, faces, labels, rows, pw, settings, out_dir, identity, progress)
    plot_history(result.history, out_dir / "curves.png", title=run)
    val_y = labels[rows["validation"]]
    # thresholds: the chosen epoch's validation frames only
    thr = tune_thresholds(val_y, predict_logits(model, faces, rows["validation"]))
    test_logits = predict_logits(model, faces, rows["test"])
    test_y = labels[rows["test"]]
    per_au = _stage2_scores(aus, test_y, test_logits, thr)
    f1, f1_05 = nanmean(r["f1"] for r in per_au), nanmean(r["f1_05"] for r in per_au)
    # the network, its thresholds and a backbone file featbench extract --weights reads
    trained_id = WeightsId.finetuned(run)
    _save_stage2_model(out_dir, spec, model, settings, aus, thr, start_id=weights_id,
                       trained_id=trained_id)
    meta = _stage2_meta(settings, weights_id, protocol, stage1, mean_f1_05=f1_05,
                        best_epoch=result.best_epoch)
    csv = write_run(workspace, table.dataset, run, per_au, meta=meta)
    pred = _write_stage2_predictions(workspace, table, run, rows["test"], test_y, test_logits, thr,
                                     aus=aus, meta=meta)
    seconds = round(time.time() - t0, 1)
    info = {"run": run, "clf": CLF, "dataset": table.dataset, "control": control, "aus": aus,
            "protocol": protocol, **_stage2_data_info(table, faces, split, rows),
            "pos_weight": None if pw is None else dict(zip(aus, pw.tolist())),
            "best_epoch": result.best_epoch, "resumed_from": result.resumed_from,
            "history": result.history,
            "thresholds": dict(zip(aus, (_sigmoid(t) for t in thr))),
            "f1": f1, "f1_05": f1_05, "weights": str(weights_id), "trained_weights": str(trained_id),
            "stage1": None if control else {k: stage1[k] for k in ("run", "mean_accuracy", "std_accuracy",
                                                                  "backbone_sha256")},
            "settings": settings.to_json(), "seconds": seconds, "device": result.device,
            "precision": result.precision, "torch": torch.__version__}
    _write_json(out_dir / "settings.json", info)
    return {**info, "csv": csv, "predictions": pred, "per_au": per_au}


def _stage2_start(spec, settings, stage1):
    """Return the StartWeights of stage 2: stage 1's backbone, or (``stage1=None``, the control)
    ``settings.weights``."""
    if stage1 is None:
        return StartWeights(spec, settings.weights)
    return StartWeights(spec, stage1["backbone_file"],
                        identity=str(WeightsId.finetuned(stage1["run"], sha256=stage1["backbone_sha256"])))


def _stage2_data_info(table, faces, split, rows):
    """Return the ``split``, ``frames`` and ``skipped`` entries of stage 2's settings.json."""
    return {"split": {"train": list(split.train), "validation": list(split.validation),
                      "test": list(split.test)},
            "frames": {k: int(len(v)) for k, v in rows.items()},
            "skipped": {**{k: int(v) for k, v in table.skipped.items()},
                        "frames without a face": int((~np.asarray(faces.valid, bool)).sum())}}


def _stage2_fit(model, faces, labels, rows, pw, settings, out_dir, identity, progress):
    """Train the stage-2 network through the shared loop (per-AU masked BCE); return its FitResult.

    The epoch is chosen by mean F1 at probability 0.5 on the validation frames.
    """
    import torch

    pw_t = torch.from_numpy(pw) if pw is not None else None
    val_y = labels[rows["validation"]]

    def step_loss(net, batch):
        x, t = batch
        return masked_bce(net(x), t, pw_t.to(x.device) if pw_t is not None else None)

    def evaluate(net):
        logits = predict_logits(net, faces, rows["validation"])
        loss = masked_bce(torch.from_numpy(logits), torch.from_numpy(val_y), pw_t)
        return {"val_loss": float(loss), "val_score": mean_f1(val_y, logits)}

    return fit(model, train_batches=train_batches(faces, rows["train"], labels.astype(np.float32),
                                                  batch_size=settings.batch_size, flip=settings.flip),
               step_loss=step_loss, evaluate=evaluate, config=settings.train_config(2),
               checkpoint_dir=out_dir / "checkpoints", identity=identity,
               log_path=out_dir / "log.csv", progress=progress)


def _stage2_scores(aus, test_y, test_logits, thr):
    """Return the per-AU table rows: metrics at the tuned logit thresholds ``thr``, and F1 at 0.5."""
    per_au = []
    for j, au in enumerate(aus):
        tuned = au_metrics(test_y[:, j], (test_logits[:, j] > thr[j]).astype(int), test_logits[:, j])
        at05 = au_metrics(test_y[:, j], (test_logits[:, j] > 0).astype(int))
        per_au.append({"au": au, **{k: tuned[k] for k in ("f1", "accuracy", "precision", "recall", "support")},
                       "threshold": _sigmoid(thr[j]), "f1_05": at05["f1"], "auc": tuned["auc"],
                       "frames": tuned["frames"]})
    return per_au


def _save_stage2_model(out_dir, spec, model, settings, aus, thr, *, start_id, trained_id):
    """Write ``backbone.pt`` (what ``featbench extract --weights`` reads) and ``model.pt``.

    ``model.pt`` holds the whole network with its thresholds (probabilities and logits).
    """
    _save_torch(out_dir / "backbone.pt", full_state_dict(spec, model.backbone))
    _save_torch(out_dir / "model.pt", {
        "format": 1, "backbone": settings.backbone, "input_size": settings.input_size,
        "hidden": list(settings.hidden), "dropout": settings.dropout, "aus": aus,
        "thresholds": [_sigmoid(t) for t in thr],
        "logit_thresholds": thr.tolist(), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "start_weights": str(start_id), "weights": str(trained_id)})


def _stage2_meta(settings, weights_id, protocol, stage1, *, mean_f1_05, best_epoch):
    """Return the run's columns of summary.csv beside the per-AU table (stage1 None: the control)."""
    control = stage1 is None
    return {"model": settings.backbone, "region": "full", "clf": CLF, "weights": str(weights_id),
            "protocol": protocol, "mean_f1_05": mean_f1_05,
            "stage1": "" if control else stage1["run"],
            "stage1_accuracy": float("nan") if control else stage1["mean_accuracy"],
            "best_epoch": best_epoch}


def _write_stage2_predictions(workspace, table, run, test_rows, test_y, test_logits, thr, *, aus,
                              meta):
    """Write the test frames' probabilities and decisions; return the predictions file's path."""
    pred = workspace.predictions_path(table.dataset, run)
    write_predictions(pred, frames=table.keys()[test_rows], labels=test_y,
                      scores=1.0 / (1.0 + np.exp(-test_logits.astype(np.float64))),
                      decisions=(test_logits > thr).astype(np.int8),
                      fold=np.zeros(len(test_rows), np.int8), aus=aus,
                      thresholds=np.array([_sigmoid(t) for t in thr]),
                      run=run, model=meta["model"], region="full", clf=CLF,
                      weights=meta["weights"], protocol=meta["protocol"], dataset=table.dataset,
                      scores_are="probabilities")
    return pred


# --- the whole method ---------------------------------------------------------------------------
def transfer_run(workspace, *, expr_table=None, au_table=None, settings=TransferSettings(),
                 stage="both", control=True, aus=None, protocol=None, progress=True):
    """Run stage 1, stage 2 and the control as asked; return ``{"stage1", "stage2", "control"}``."""
    if stage not in ("1", "2", "both"):
        raise UsageError(f"--stage must be 1, 2 or both, got {stage!r}")
    out = {}
    if stage in ("1", "both"):
        with run_lock(workspace.models_dir(expr_table.dataset, str(stage1_run(settings)))):
            out["stage1"] = run_stage1(workspace, expr_table, settings, progress=progress)
    if stage in ("2", "both"):
        s1 = out.get("stage1") or load_stage1(workspace, expr_table.dataset, settings)
        with run_lock(workspace.models_dir(au_table.dataset, str(stage2_run(settings)))):
            out["stage2"] = run_stage2(workspace, au_table, settings, stage1=s1, aus=aus,
                                       protocol=protocol, progress=progress)
        if control:
            with run_lock(workspace.models_dir(au_table.dataset,
                                               str(stage2_run(settings, control=True)))):
                out["control"] = run_stage2(workspace, au_table, settings, stage1=None, aus=aus,
                                            protocol=protocol, progress=progress)
    return out


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
            lines.append(f"{label} {r['run']} on {r['dataset']} ({r['protocol']}; start "
                         f"{WeightsId.parse(r['weights']).describe()}): mean F1 {r['f1_05']:.3f} at 0.5, "
                         f"{r['f1']:.3f} tuned; epoch {r['best_epoch']} ({r['seconds']:.0f} s) -> {r['csv']}")
    if out.get("stage2") and out.get("control"):
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


def _check_torch(spec):
    if spec.kind != "torch":
        raise UsageError(f"{spec.name} is not a trainable network; transfer needs a CNN backbone "
                         "(resnet50, tv:resnet18, tv:mobilenet_v2...; featbench models lists all)")


def _save_torch(path, obj):
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


__all__ = ["TransferSettings", "run_stage1", "run_stage2", "transfer_run", "format_result", "load_model",
           "tune_thresholds", "pos_weights", "masked_bce", "expression_folds", "stage2_rows",
           "full_state_dict", "build_net"]


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

    from classify.ft_net import check_input_size

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
