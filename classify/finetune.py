"""Fine-tuning CNNs for the AUs (Method A's fine-tuned networks): ``featbench finetune``.

:func:`finetune_run` trains, through the one training loop (:func:`classify.training.fit`),
the network :func:`classify.ft_net.create_finetune_net` builds (conv weights from
``--weights``, fully connected layers re-initialised, a new output layer, layers below
``--train-from`` frozen) on the aligned-face cache, and writes the run in the contracts every
classifier run follows.

What is trained
---------------
A run trains *units*, each one network through one :func:`fit`:

=============== ===================== ===========================================================
head            region                units
=============== ===================== ===========================================================
``per-au``      full / upper / ...    one network per AU, 2 outputs (absent, present): the paper
``per-au``      auto                  the same, each AU's network on its own region's crops
``multilabel``  full / upper / ...    one network, one logit per AU (12x cheaper)
``multilabel``  auto                  one network per region, one logit per AU of the region
=============== ===================== ===========================================================

Per fold of the protocol (``featbench.core.splits``) and unit:

- **training batches** come from the training subjects only and are balanced as the paper
  balances (:func:`classify.estimators.balance_indices`): every epoch takes all positive
  frames of the AU and as many negatives, drawn afresh from ``(seed, epoch)``; a multilabel
  unit takes the union of its AUs' balanced draws and weighs each AU's positives by its
  negatives / positives in that union. Faces are read from the cache (regions cropped from
  the aligned landmarks' boxes), resized to the input size, and lightly augmented in ways
  that keep every AU visible: a horizontal flip (DISFA's AUs are scored on both sides
  together), a shift of at most 4 % of the side, brightness and contrast within 10 %;
- **the epoch** is chosen on the validation subjects (never test): each epoch's validation
  score is the mean over the unit's AUs of the F1 at threshold 0 on the AU's balanced
  validation frames (as classify chooses C), and training stops after ``patience`` epochs
  without a better one;
- **the threshold** is 0 on the score (per-au: logit(present) - logit(absent); multilabel:
  the logit), or with ``tune_threshold`` the F1-best threshold on all of the validation
  subjects' frames (unbalanced, as test);
- **a checkpoint per epoch** (fit's ``last.pt``) lives under
  ``results/<ds>/models/.<run>.partial/<unit>/``; a finished unit is saved there as
  ``<unit>.pt`` + ``<unit>.json``, so a killed run resumes at the epoch it was in and skips
  finished units. The same settings and seed give the same final model on CPU.

Outputs (as ``featbench classify``'s; ``clf`` = ``ft``)::

    results/<ds>/<model>__<region>__ft[__tags].csv   per-AU metrics + mean
    results/<ds>/summary.csv                         the run's row: weights, head, reinit...
    results/<ds>/predictions/<run>.h5                test frames' scores and decisions
    results/<ds>/models/<run>/model.pt | <AU>.pt     the trained network's state dict (unit)
    results/<ds>/models/<run>/settings.json          every setting, per-unit epoch, thresholds
    results/<ds>/models/<run>/<unit>.log.csv, .png   per-epoch log and curves

Run-name tags for non-default settings: ``ml`` (multilabel), ``fc67`` (``--reinit fc6-fc7``),
``headonly`` (``--reinit head``), ``from<layer>`` (``--train-from``), then classify's
(``thr``, protocol, ``s<seed>``, AU subset) and ``--tag``.

``featbench extract --model M --weights results/<ds>/models/<run>/model.pt`` extracts the
fine-tuned network's codes into ``data/features/<ds>/<M>-ft.h5`` (weights identity
``finetuned:<run> sha256:...``), for ``featbench classify --model <M>-ft``.
"""

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from featbench.core.align import AlignedFaces
from featbench.core.aus import AU_REGION, REGIONS
from featbench.core.errors import DataError, FeatbenchError, StoreError, UsageError, did_you_mean
from featbench.core.identity import RunKey
from featbench.core.metrics import METRICS, au_metrics, nanmean
from featbench.core.results import record_failure, run_table, write_predictions, write_run
from featbench.core.splits import make_splits
from featbench.core.workspace import Workspace, atomic_write_text, run_lock, temp_sibling

from classify.estimators import balance_indices, best_threshold, decide
from classify.ft_net import HEADS, REINITS, check_choice, create_finetune_net
from classify.run import format_result as classify_format, resolve_aus, run_tag
from classify.training import TrainConfig, autocast_dtype, fit, plot_history
from extract.encoders import resolve_device
from extract.registry import get_spec
from extract.weights import parse_weights

REGION_CHOICES = ("full",) + REGIONS + ("auto",)
#: augmentation bounds: shift as a fraction of the side, brightness and contrast factors
SHIFT, GAIN, BIAS = 0.04, 0.10, 0.10


@dataclass(frozen=True)
class FinetuneConfig:
    """The settings of one fine-tuning run (saved in settings.json and the checkpoints).

    Attributes
    ----------
    model : str
        A torch network of the extract registry (``cnn_f``, ``alexnet``, ``tv:<name>``...).
    weights : str or None
        ``--weights``: ``imagenet``, ``random[:S]`` or a state-dict path (None: the network's
        default).
    reinit : {"fc", "fc6-fc7", "head"}
    train_from : str or None
        Freeze every layer before this one.
    head : {"per-au", "multilabel"}
    region : {"full", "upper", "middle", "lower", "auto"}
    protocol : str
    aus : str or list or None
    epochs, batch_size : int
    lr, momentum, weight_decay : float
        Optimiser settings (momentum: SGD only).
    optimizer : {"sgd", "adam"}
        SGD (the paper's) or AdamW.
    patience : int or None
        Early stopping on the validation score.
    input_size : int or None
        Face side fed to the network (default: the network's own).
    augment : bool
    tune_threshold : bool
    device : str
    seed : int
    tag : str or None
        An extra run-name tag.
    """

    model: str = "cnn_f"
    weights: object = None
    reinit: str = "fc"
    train_from: object = None
    head: str = "per-au"
    region: str = "full"
    protocol: str = "paper"
    aus: object = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    patience: object = 3
    input_size: object = None
    augment: bool = True
    tune_threshold: bool = False
    device: str = "auto"
    seed: int = 0
    tag: object = None

    def __post_init__(self):
        check_choice(self.head, HEADS, "--head")
        check_choice(self.reinit, REINITS, "--reinit")
        if self.region not in REGION_CHOICES:
            raise UsageError(did_you_mean(str(self.region), REGION_CHOICES, what="region"))
        if int(self.epochs) < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if int(self.batch_size) < 2:
            raise UsageError(f"--batch-size must be at least 2, got {self.batch_size}")
        if self.tag is not None and (not str(self.tag).isalnum()):
            raise UsageError(f"--tag must be letters and digits only, got {self.tag!r}")


@dataclass(frozen=True)
class Unit:
    """One network of a run: its name (file stem), its AUs and the region it sees."""

    name: str
    aus: tuple
    region: str


def make_units(aus, head, region):
    """Return the :class:`Unit` list of a run (see the module docstring's table)."""
    if head == "per-au":
        return [Unit(au, (au,), AU_REGION[au] if region == "auto" else region) for au in aus]
    if region != "auto":
        return [Unit("model", tuple(aus), region)]
    return [Unit(reg, tuple(a for a in aus if AU_REGION[a] == reg), reg)
            for reg in REGIONS if any(AU_REGION[a] == reg for a in aus)]


#: run-name tags that say how a network was fine-tuned (not which protocol or setting)
VARIANT_TAGS = ("ml", "fc67", "headonly")


def is_variant_tag(tag):
    """True for a tag of :data:`VARIANT_TAGS` or ``from<layer>`` (ensembles ignore them)."""
    return tag in VARIANT_TAGS or (str(tag).startswith("from") and len(str(tag)) > 4)


def finetune_run_name(config, table):
    """Return the run name of ``config`` on ``table``: ``<model>__<region>__ft[__tags]``."""

    default_aus = resolve_aus(table, config.protocol)
    aus = resolve_aus(table, config.protocol, config.aus)
    tags = finetune_tags(config, aus=aus, default_aus=default_aus)
    return str(RunKey(get_spec(config.model).name, config.region, "ft", tags))


def finetune_tags(config, *, aus, default_aus):
    """Return the run-name tags of ``config``'s non-default settings (a tuple)."""
    tags = []
    if config.head == "multilabel":
        tags.append("ml")
    tags += {"fc6-fc7": ["fc67"], "head": ["headonly"]}.get(config.reinit, [])
    if config.train_from:
        tags.append("from" + "".join(ch for ch in str(config.train_from) if ch.isalnum()))
    common = run_tag(protocol=config.protocol, tune_threshold=config.tune_threshold,
                     seed=config.seed, aus=aus, default_aus=default_aus)
    tags += common.split("-") if common else []
    if config.tag:
        tags.append(str(config.tag))
    return tuple(tags)


# --- faces ---------------------------------------------------------------------------------------
class FaceReader:
    """Read aligned faces or region crops at the network's input size, optionally augmented."""

    def __init__(self, path, region, size):
        self.faces = AlignedFaces(path)
        self.region, self.size = region, int(size)

    def read(self, rows, aug=None):
        """Return (k, S, S, 3) uint8 faces of ``rows``; ``aug`` = per-row augmentation draws."""
        size = None if (self.region == "full" and self.size == self.faces.size) else self.size
        imgs = self.faces.read(np.asarray(rows, np.int64), region=self.region, size=size)
        return augment(imgs, aug) if aug is not None else imgs

    def close(self):
        self.faces.close()


def draw_augmentation(rng, n, size):
    """Return the augmentation draws of ``n`` faces: flip, shift (dx, dy), gain, bias."""
    m = max(1, int(round(SHIFT * size)))
    return {"flip": rng.random(n) < 0.5, "shift": rng.integers(-m, m + 1, size=(n, 2)),
            "gain": rng.uniform(1 - GAIN, 1 + GAIN, n).astype(np.float32),
            "bias": rng.uniform(-BIAS, BIAS, n).astype(np.float32) * 255}


def augment(imgs, aug):
    """Apply :func:`draw_augmentation`'s draws to (k, S, S, 3) uint8 faces (a new array)."""
    out = np.empty_like(imgs)
    h, w = imgs.shape[1:3]
    for i, im in enumerate(imgs):
        if aug["flip"][i]:
            im = im[:, ::-1]
        dx, dy = (int(v) for v in aug["shift"][i])
        pad = np.pad(im, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
        out[i] = pad[abs(dy) + dy:abs(dy) + dy + h, abs(dx) + dx:abs(dx) + dx + w]
    # brightness / contrast about each face's mean: an affine map of the 256 grey levels, so a
    # per-face lookup table (the same float32 arithmetic per level: bit-identical to computing
    # it per pixel, and a fraction of the memory traffic)
    mean = out.astype(np.float32).mean(axis=(1, 2, 3))[:, None]
    levels = np.arange(256, dtype=np.float32)[None, :]
    lut = (levels - mean) * aug["gain"][:, None] + mean + aug["bias"][:, None]
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    for i in range(len(out)):
        np.take(lut[i], out[i], out=out[i])
    return out


def prefetch_workers():
    """Background reader threads for :func:`prefetch`: a quarter of the CPU cores, 1 to 4.

    On a GPU the faces' reading and augmentation, not the network, bound an epoch (README: on
    an H200 about 200 faces/s against the 3,366 the loop alone trains); on a 2-core machine one
    thread leaves the cores to the network.
    """
    import os

    return max(1, min(4, (os.cpu_count() or 1) // 4))


def prefetch(items, read, workers=None):
    """Yield ``read(item)`` for each item, in order, with up to ``workers`` items read ahead in
    background threads (default: :func:`prefetch_workers`).

    ``read`` must depend on its item alone (then the batches are the same for any ``workers``);
    numpy, OpenCV and HDF5 decompression release the GIL, so the threads overlap.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = prefetch_workers() if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featbench-ft-read") as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(read, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def check_region_crops(reader, rows, region, path):
    """DataError when ``region`` has no usable crop (empty boxes) for some of ``rows``."""
    if region == "full":
        return
    r = REGIONS.index(region)
    b = reader.faces.boxes[np.asarray(rows, np.int64), r]
    empty = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if empty.any():
        raise DataError(f"{path}: {int(empty.sum())} of {len(rows)} faces have no {region} crop "
                        "(empty region box); rebuild the cache with featbench align, or use "
                        "--region full")


# --- scores --------------------------------------------------------------------------------------
def unit_scores(model, reader, rows, head, *, batch_size, device, dtype=None):
    """Return the (len(rows), k) float32 scores of ``rows`` (per-au: k = 1, logit difference)."""
    import torch

    chunks = [rows[a:a + batch_size] for a in range(0, len(rows), batch_size)]
    model.eval()
    with torch.inference_mode():
        out = [score_faces(model, imgs, head, device=device, dtype=dtype)
               for imgs in prefetch(chunks, reader.read)]
    k = 1 if head == "per-au" else None
    return np.concatenate(out) if out else np.zeros((0, k or 0), np.float32)


def score_faces(model, imgs, head, *, device, dtype=None):
    """Return the (k, outputs) float32 scores of (k, S, S, 3) uint8 faces; per-au: one column,
    logit(present) - logit(absent). Call it under ``torch.inference_mode()``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(imgs)).to(device)
    with torch.autocast(device_type=str(device).split(":")[0], dtype=dtype, enabled=dtype is not None):
        logits = model(x).float()
    s = logits[:, 1:2] - logits[:, 0:1] if head == "per-au" else logits
    return s.cpu().numpy()


def _logistic_loss(y, s):
    """Mean of softplus(-(2y - 1) s) over labelled frames: BCE of a score (= 2-way CE)."""
    keep = y >= 0
    if not keep.any():
        return float("nan")
    z = -(2.0 * y[keep] - 1.0) * s[keep]
    return float(np.mean(np.logaddexp(0.0, z)))


# --- one unit of one fold ------------------------------------------------------------------------
@dataclass
class _UnitData:
    """The frames one unit trains and is validated on (rows of the table), and its labels.

    ``y`` (n_frames, len(aus)) labels of the unit's AUs; ``train`` the labelled training rows;
    ``val_all`` every labelled validation row; ``val_bal`` per AU, its balanced validation rows
    (fixed for the run, as classify chooses C on them); ``val_rows`` their union;
    ``trainable`` the AUs with positive and negative training frames.
    """

    y: np.ndarray
    train: np.ndarray
    val_all: np.ndarray
    val_bal: list
    val_rows: np.ndarray
    n_train_pos: dict
    trainable: list


def _unit_data(cfg, fi, unit, y, rows):
    tr = rows["train"][(y[rows["train"]] >= 0).any(axis=1)]
    va_all = rows["validation"][(y[rows["validation"]] >= 0).any(axis=1)]
    va_bal = []
    for j, au in enumerate(unit.aus):
        r = va_all[y[va_all, j] >= 0]
        va_bal.append(r[balance_indices(y[r, j], np.random.default_rng([cfg.seed, fi, int(au[2:])]))])
    va_rows = np.unique(np.concatenate(va_bal)) if va_bal else np.zeros(0, np.int64)
    pos = {au: int((y[tr, j] == 1).sum()) for j, au in enumerate(unit.aus)}
    trainable = [au for j, au in enumerate(unit.aus) if 0 < pos[au] < int((y[tr, j] >= 0).sum())]
    return _UnitData(y, tr, va_all, va_bal, va_rows, pos, trainable)


def _train_batches(cfg, unit, data, reader):
    """``fit``'s ``train_batches``: per epoch, the union of the AUs' balanced draws, prefetched."""
    import torch

    y, tr = data.y, data.train

    def train_batches(epoch, rng):
        parts = []
        for j in range(len(unit.aus)):
            r = tr[y[tr, j] >= 0]
            parts.append(r[balance_indices(y[r, j], rng)])
        sample = rng.permutation(np.unique(np.concatenate(parts)))
        ys = y[sample]
        npos = (ys == 1).sum(axis=0)
        nneg = (ys == 0).sum(axis=0)
        pw = np.clip(nneg / np.maximum(npos, 1), 0.1, 10.0).astype(np.float32)
        aug = draw_augmentation(rng, len(sample), reader.size) if cfg.augment else None
        bs = int(cfg.batch_size)
        chunks = [(a, sample[a:a + bs]) for a in range(0, len(sample), bs)
                  if len(sample[a:a + bs]) >= 2]

        def read(item):
            a, idx = item
            sub = None if aug is None else {k: v[a:a + len(idx)] for k, v in aug.items()}
            return (torch.from_numpy(reader.read(idx, sub)),
                    torch.from_numpy(y[idx].astype(np.float32)), torch.from_numpy(pw))

        return prefetch(chunks, read)

    return train_batches


def _step_loss(head):
    """``fit``'s ``step_loss``: 2-way cross-entropy (per-au) or masked, weighted BCE (multilabel)."""
    import torch

    def step_loss(net, batch):
        x, yy, pw = batch
        logits = net(x).float()
        if head == "per-au":
            return torch.nn.functional.cross_entropy(logits, yy[:, 0].long())
        mask = (yy >= 0).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, yy.clamp(min=0), pos_weight=pw, reduction="none")
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    return step_loss


def _evaluate(ctx, unit, data, reader):
    """``fit``'s ``evaluate``: mean F1 at threshold 0 (and loss) on the balanced validation frames."""
    cfg, y = ctx["config"], data.y

    def evaluate(net):
        s = unit_scores(net, reader, data.val_rows, cfg.head, batch_size=2 * int(cfg.batch_size),
                        device=ctx["device"], dtype=ctx["dtype"])
        f1s, losses = [], []
        for j, au in enumerate(unit.aus):
            if au not in data.trainable:
                continue
            bal = data.val_bal[j]
            idx = np.searchsorted(data.val_rows, bal)  # val_rows: the sorted union of val_bal
            yj, sj = y[bal, j], s[idx, 0 if cfg.head == "per-au" else j]
            f1s.append(au_metrics(yj, (sj > 0).astype(np.int8))["f1"] if len(idx) else np.nan)
            losses.append(_logistic_loss(yj.astype(np.float64), sj))
        return {"val_score": nanmean(f1s), "val_loss": nanmean(losses)}

    return evaluate


def _thresholds(ctx, unit, data, model, reader):
    """0 per AU, or with ``tune_threshold`` the F1-best on every validation frame (as test)."""
    cfg, y, va = ctx["config"], data.y, data.val_all
    thr = [0.0] * len(unit.aus)
    if cfg.tune_threshold and va.size:
        s = unit_scores(model, reader, va, cfg.head, batch_size=2 * int(cfg.batch_size),
                        device=ctx["device"], dtype=ctx["dtype"])
        for j in range(len(unit.aus)):
            keep = y[va, j] >= 0
            thr[j] = best_threshold(y[va[keep], j], s[keep, 0 if cfg.head == "per-au" else j])
    return [float(t) for t in thr]


def _fit_unit(ctx, fi, unit, data, model, reader, *, name, identity, work):
    """Train ``model`` through :func:`classify.training.fit`; return what the unit's result adds."""
    cfg = ctx["config"]
    tc = TrainConfig(epochs=int(cfg.epochs), lr=float(cfg.lr), optimizer=cfg.optimizer,
                     momentum=float(cfg.momentum), weight_decay=float(cfg.weight_decay),
                     patience=cfg.patience, seed=int(cfg.seed) + fi, device=cfg.device)
    t0 = time.time()
    fr = fit(model, train_batches=_train_batches(cfg, unit, data, reader),
             step_loss=_step_loss(cfg.head), evaluate=_evaluate(ctx, unit, data, reader),
             config=tc, checkpoint_dir=work / name, identity=identity,
             log_path=work / f"{name}.log.csv", progress=ctx["progress"])
    if fr.history:
        plot_history(fr.history, work / f"{name}.png",
                     title=f"{ctx['run']} {name} ({cfg.head}, {identity['weights']})")
    return {"best_epoch": int(fr.best_epoch), "val_f1": float(fr.best.get("val_score", np.nan)),
            "epochs_run": len(fr.history), "stopped_early": bool(fr.stopped_early),
            "resumed_from": int(fr.resumed_from), "train_seconds": round(time.time() - t0, 1),
            "device": str(fr.device), "precision": fr.precision,
            "thresholds": _thresholds(ctx, unit, data, model, reader)}


def _train_unit(ctx, fi, unit, rows, work):
    """Train one unit (or load it when finished before); return its result dict."""
    import torch

    cfg = ctx["config"]
    y = ctx["labels"][:, [ctx["au_index"][a] for a in unit.aus]]
    name = unit.name if ctx["n_folds"] == 1 else f"{unit.name}-{ctx['splits'][fi].name}"
    model, info = create_finetune_net(ctx["spec"], cfg.weights,
                                      outputs=2 if cfg.head == "per-au" else len(unit.aus),
                                      reinit=cfg.reinit, train_from=cfg.train_from,
                                      input_size=cfg.input_size, seed=cfg.seed)
    identity = {"settings": ctx["identity"], "unit": asdict(unit), "fold": fi,
                "weights": info["weights"]}
    reader = FaceReader(ctx["aligned_path"], unit.region, info["input_size"])
    res = {"unit": name, "aus": list(unit.aus), "region": unit.region, "info": info}
    try:
        for part in ("train", "validation", "test"):
            check_region_crops(reader, rows[part], unit.region, ctx["aligned_path"])
        data = _unit_data(cfg, fi, unit, y, rows)
        res.update(n_train_pos=data.n_train_pos, n_train=int(data.train.size))
        if not data.trainable:
            res["error"] = "no positive (or no negative) frame in training: no network"
            return res
        done, state_file = work / f"{name}.json", work / f"{name}.pt"
        saved = json.loads(done.read_text()) if done.is_file() else None
        if saved is not None and saved.get("identity") == json.loads(json.dumps(identity, default=str)):
            model.load_exported(torch.load(state_file, map_location="cpu", weights_only=True))
            res.update(saved["result"])
            model.to(ctx["device"])
        else:
            res.update(_fit_unit(ctx, fi, unit, data, model, reader, name=name, identity=identity,
                                 work=work))
            torch.save(model.export_state(), state_file)
            keep = {k: v for k, v in res.items() if k not in ("info",)}
            atomic_write_text(done, json.dumps({"identity": identity, "result": keep}, default=str))
            shutil.rmtree(work / name, ignore_errors=True)  # last.pt: no longer needed
        res["trainable"] = data.trainable
        res["test_scores"] = unit_scores(model, reader, rows["test"], cfg.head,
                                         batch_size=2 * int(cfg.batch_size),
                                         device=ctx["device"], dtype=ctx["dtype"])
        return res
    finally:
        reader.close()
        del model


# --- the run -------------------------------------------------------------------------------------
def finetune_run(workspace, dataset, config=None, *, table=None, aligned_path=None, progress=True,
                 **kwargs):
    """Fine-tune ``config.model`` for the AUs of ``dataset``; write the run's outputs.

    Parameters
    ----------
    workspace : Workspace or path
    dataset : str
    config : FinetuneConfig, optional
        Or its fields as keyword arguments.
    table : FrameTable, optional
        Default: ``featbench.core.datasets.load_dataset(dataset)``.
    aligned_path : path, optional
        An aligned-face cache in the table's row order (default: the workspace's, built or
        reused by ``featbench.core.align.ensure_aligned``).
    progress : bool

    Returns
    -------
    dict
        ``run``, ``dataset``, ``rows`` (per-AU dicts as in the CSV), ``mean``, ``notes``,
        ``meta``, ``csv``, ``predictions``, ``models_dir``, ``units``, ``seconds``.

    Raises
    ------
    UsageError, WeightsError, DataError, StoreError
        Bad settings, weights of another architecture, a region without crops... Once the
        run's name is known, a failure is also recorded as its row in ``summary.csv``.
    """

    t0 = time.time()
    config = config or FinetuneConfig(**kwargs)
    workspace = Workspace(workspace) if not isinstance(workspace, Workspace) else workspace
    spec = get_spec(config.model)
    parse_weights(config.weights, spec)  # a missing file fails before any data is read
    if table is None:
        from featbench.core.datasets import load_dataset

        table = load_dataset(dataset, workspace=workspace, progress=progress)
    au_list = resolve_aus(table, config.protocol, config.aus)
    run = finetune_run_name(config, table)
    meta = {"model": spec.name, "region": config.region, "clf": "ft", "weights": "",
            "head": config.head, "reinit": config.reinit, "train_from": config.train_from or "",
            "protocol": config.protocol, "dataset": dataset,
            "tune_threshold": bool(config.tune_threshold), "seed": config.seed}
    with run_lock(workspace.models_dir(dataset, run)):  # a second identical run: refused now
        try:
            return _finetune(workspace, dataset, run, table, au_list, spec, config, meta,
                             aligned_path=aligned_path, progress=progress, t0=t0)
        except FeatbenchError as exc:
            record_failure(workspace, dataset, run, exc, meta=meta)
            raise


def check_network(config):
    """Build ``config``'s network once and return its info (see :func:`create_finetune_net`).

    Weights of another architecture, an unknown ``--train-from`` layer, an input size that
    does not fit: all fail here, before any face is read.
    """
    _, info = create_finetune_net(get_spec(config.model), config.weights, outputs=2,
                                  reinit=config.reinit, train_from=config.train_from,
                                  input_size=config.input_size, seed=config.seed)
    return info


def _finetune(workspace, dataset, run, table, au_list, spec, config, meta, *, aligned_path,
              progress, t0):

    info = check_network(config)
    meta["weights"] = info["weights"]
    if aligned_path is None:
        from featbench.core.align import ensure_aligned

        aligned_path = ensure_aligned(table, workspace, progress=progress)
    with AlignedFaces(aligned_path) as faces:
        valid = faces.valid.copy()
        keys = faces.keys
    if len(valid) != len(table) or not np.array_equal(keys, table.keys()):
        raise StoreError(f"{aligned_path}: the aligned-face cache does not list the frames of "
                         f"{dataset} in its order (rerun featbench align)")
    labels = table.labels(au_list)
    splits = make_splits(table, config.protocol, seed=config.seed)
    device = resolve_device(config.device)
    ctx = {"config": config, "labels": labels, "au_index": {a: i for i, a in enumerate(au_list)},
           "spec": spec, "splits": splits, "n_folds": len(splits), "aligned_path": aligned_path,
           "device": device, "dtype": autocast_dtype(device), "progress": progress, "run": run,
           "identity": {**{k: v for k, v in asdict(config).items() if k not in ("device",)},
                        "aus": au_list, "table": table.fingerprint(),
                        "faces": str(_cache_fingerprint(aligned_path))}}
    units = make_units(au_list, config.head, config.region)
    work = workspace.models_dir(dataset, run).with_name(f".{run}.partial")
    work.mkdir(parents=True, exist_ok=True)
    labelled = (labels >= 0).any(axis=1)
    results, test_rows = {}, []
    missing = 0
    jobs = []
    for fi, split in enumerate(splits):
        rows = {}
        for part in ("train", "validation", "test"):
            m = split.mask(table, part)
            if part != "train":
                missing += int((m & labelled & ~valid).sum())
            rows[part] = np.flatnonzero(m & valid)
        test_rows.append(rows["test"])
        jobs += [(fi, u, rows) for u in units]
    if not any(r.size for r in test_rows):
        raise DataError(f"{aligned_path}: no test frame of {dataset} has an aligned face")
    for fi, unit, rows in jobs:
        if progress:
            print(f"finetune {run}: {unit.name} ({', '.join(unit.aus)}; {unit.region})"
                  + (f", fold {splits[fi].name}" if len(splits) > 1 else ""), file=sys.stderr)
        results[(fi, unit.name)] = _train_unit(ctx, fi, unit, rows, work)
    return _write_outputs(workspace, dataset, run, table, au_list, units, splits, test_rows,
                          results, labels, config, meta, info, work, missing, t0)


def _cache_fingerprint(path):
    import h5py

    with h5py.File(path, "r") as f:
        return f.attrs.get("fingerprint", "")


def _write_outputs(workspace, dataset, run, table, au_list, units, splits, test_rows, results,
                   labels, config, meta, info, work, missing, t0):

    n_folds, k = len(splits), len(au_list)
    unit_of = {au: u for u in units for au in u.aus}
    thresholds = np.full((n_folds, k), np.nan)
    n = sum(r.size for r in test_rows)
    scores = np.full((n, k), np.nan, np.float32)
    decisions = np.zeros((n, k), np.int8)
    fold = np.concatenate([np.full(r.size, fi, np.int8) for fi, r in enumerate(test_rows)])
    start = 0
    notes = []
    for fi, r in enumerate(test_rows):
        for ai, au in enumerate(au_list):
            res = results[(fi, unit_of[au].name)]
            j = res["aus"].index(au)
            if "error" in res or au not in res.get("trainable", ()):
                notes.append(f"{au}: {res.get('error') or 'no positive (or no negative) frame in training'}")
                continue
            s = res["test_scores"][:, 0 if config.head == "per-au" else j]
            thresholds[fi, ai] = res["thresholds"][j]
            scores[start:start + r.size, ai] = s
            decisions[start:start + r.size, ai] = decide(s, res["thresholds"][j])
        start += r.size
    rows_out = []
    for ai, au in enumerate(au_list):
        per_fold = []
        for fi, r in enumerate(test_rows):
            a = sum(x.size for x in test_rows[:fi])
            y = labels[r, ai]
            if np.isfinite(thresholds[fi, ai]):
                per_fold.append(au_metrics(y, decisions[a:a + r.size, ai], scores[a:a + r.size, ai]))
            else:
                m = {key: float("nan") for key in METRICS}
                m["support"], m["frames"] = int((y == 1).sum()), int((y >= 0).sum())
                per_fold.append(m)
        res0 = results[(0, unit_of[au].name)]
        row = {"au": au}
        for key in ("f1", "accuracy", "precision", "recall"):
            row[key] = nanmean(m[key] for m in per_fold)
        row["support"] = int(sum(m["support"] for m in per_fold))
        row["threshold"] = nanmean(thresholds[:, ai])
        row["auc"] = nanmean(m["auc"] for m in per_fold)
        row["frames"] = int(sum(m["frames"] for m in per_fold))
        row["best_epoch"] = res0.get("best_epoch", "")
        row["val_f1"] = res0.get("val_f1", float("nan"))
        row["head"] = config.head
        rows_out.append(row)
    if missing:
        notes.append(f"{missing} labelled validation/test frames have no aligned face and were left out")
    meta = {**meta, "input_size": info["input_size"], "epochs": config.epochs,
            "n_test": int(n), "seconds": round(time.time() - t0, 1)}
    frames = table.keys()[np.concatenate(test_rows)]
    pred = write_predictions(
        workspace.predictions_path(dataset, run), frames=frames,
        labels=labels[np.concatenate(test_rows)], scores=scores, decisions=decisions, fold=fold,
        aus=au_list, thresholds=[r["threshold"] for r in rows_out], fold_thresholds=thresholds,
        run=run, folds=[s.name for s in splits],
        failed_aus=[r["au"] for r in rows_out if not np.isfinite(r["threshold"])],
        **{key: meta[key] for key in ("model", "region", "clf", "weights", "protocol", "dataset",
                                      "head", "reinit")})
    models_dir = _write_models(workspace, dataset, run, config, meta, info, units, splits, results,
                               work, au_list)
    csv = write_run(workspace, dataset, run, rows_out, meta=meta)
    mean = run_table(rows_out)[0][-1]
    return {"run": run, "dataset": dataset, "rows": rows_out, "mean": mean, "notes": notes,
            "meta": meta, "csv": csv, "predictions": pred, "models_dir": models_dir,
            "units": {key[1] if n_folds == 1 else f"{key[1]}-{splits[key[0]].name}":
                      {k: v for k, v in r.items() if k not in ("test_scores", "info")}
                      for key, r in results.items()},
            "seconds": meta["seconds"]}


def _write_models(workspace, dataset, run, config, meta, info, units, splits, results, work, au_list):
    """Move the finished units from the partial folder into ``models/<run>/`` with settings.json."""
    import torch

    import featbench
    final = workspace.models_dir(dataset, run)
    tmp = temp_sibling(final)
    tmp.mkdir(parents=True)
    per_unit = {}
    for (fi, uname), res in results.items():
        name = res["unit"]
        entry = {k: v for k, v in res.items() if k not in ("test_scores", "info", "unit")}
        for suffix in (".pt", ".log.csv", ".png"):
            src = work / f"{name}{suffix}"
            if src.exists():
                os.replace(src, tmp / f"{name}{suffix}")
                entry[{".pt": "model_file", ".log.csv": "log", ".png": "curves"}[suffix]] = src.name
        per_unit[name] = entry
    settings = {"run": run, **{k: v for k, v in meta.items() if k != "seconds"},
                "config": asdict(config), "aus": au_list,
                "units": per_unit, "network": {k: v for k, v in info.items() if k != "frozen"},
                "frozen_parameters": info["frozen"],
                "score": ("logit(present) - logit(absent)" if config.head == "per-au"
                          else "the AU's logit"), "default_threshold": 0.0,
                "folds": [{"name": s.name, "train": list(s.train), "validation": list(s.validation),
                           "test": list(s.test)} for s in splits],
                "versions": {"featbench": featbench.__version__, "torch": torch.__version__,
                             "python": sys.version.split()[0]},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(tmp / "settings.json", json.dumps(settings, indent=2, default=str) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
    return final


def load_unit(models_dir, unit="model", *, device="cpu"):
    """Return ``(net, settings)``: a trained unit of a finetune run, ready for uint8 faces.

    Parameters
    ----------
    models_dir : path
        ``results/<ds>/models/<run>/``.
    unit : str
        ``model`` (multilabel, one region), an AU (per-au) or a region (multilabel, auto).
    """
    import torch
    from pathlib import Path

    models_dir = Path(models_dir)
    settings = json.loads((models_dir / "settings.json").read_text())
    entry = settings["units"].get(unit)
    if entry is None or "model_file" not in entry:
        raise UsageError(did_you_mean(unit, [u for u, e in settings["units"].items() if "model_file" in e],
                                      what=f"unit of {settings['run']}"))
    state = torch.load(models_dir / entry["model_file"], map_location="cpu", weights_only=True)
    return unit_network(settings, unit, state).to(device).eval(), settings


def unit_network(settings, unit, state):
    """Return the network of ``unit`` of a run's ``settings`` (settings.json) with ``state`` loaded.

    ``state`` is what the run saved as ``<unit>.pt`` (:meth:`export_state`); ``featbench
    predict`` and ``featbench export`` rebuild units through here, as :func:`load_unit` does.
    """
    cfg, entry = settings["config"], settings["units"][unit]
    outputs = 2 if cfg["head"] == "per-au" else len(entry["aus"])
    net, _ = create_finetune_net(get_spec(cfg["model"]), "random:0", outputs=outputs,
                                 reinit=cfg["reinit"], input_size=settings["network"]["input_size"])
    return net.load_exported(state)


def format_result(result):
    """Return the one-screen text of a finetune run (classify's table) and its summary line."""
    meta = result["meta"]
    text = classify_format({**result, "meta": {**meta, "n_train": _n_train(result)}})
    epochs = ", ".join(f"{u} {r.get('best_epoch', '-')}" for u, r in list(result["units"].items())[:12])
    return (text + f"\nhead {meta['head']}, reinit {meta['reinit']}, weights {meta['weights']}, "
            f"input {meta['input_size']} px; best epoch per unit: {epochs}")


def _n_train(result):
    vals = [r.get("n_train", 0) for r in result["units"].values()]
    return int(max(vals)) if vals else 0
