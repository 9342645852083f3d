"""Fine-tuning CNNs for the AUs (Method A's fine-tuned networks): ``featbench finetune``.

:class:`FinetuneMethod` is the method (:mod:`classify.learn.method`): the network
:func:`classify.ft_net.create_finetune_net` builds (conv weights from ``--weights``, fully
connected layers re-initialised, a new output layer, layers below ``--train-from`` frozen), fed
aligned faces by the face source (:mod:`featbench.core.facesource`) and trained by the shared
fold x unit loop (:mod:`classify.learn.loop`) through :func:`classify.training.fit`, with the
occurrence task's loss, metric and thresholds (:mod:`classify.task`).
:func:`finetune_run` writes the run through the one run writer (:mod:`classify.learn.writer`).

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

The score of an AU is ``logit(present) - logit(absent)`` (per-au) or its logit (multilabel);
the task's masked binary cross-entropy is taken on it (for a 2-way output, the same as its
cross-entropy). Per fold of the protocol (``featbench.core.splits``) and unit:

- **training batches** come from the training subjects only, balanced as the paper balances:
  every epoch takes all positive frames of the AU and as many negatives, drawn afresh from
  ``(seed, epoch)``; a multilabel unit takes the union of its AUs' balanced draws, its positives
  weighted by the task's rule on that union. Faces are the unit's region (or the full face)
  resized to the input size by the face source, augmented (flip, shift, brightness, contrast);
- **the epoch** is chosen on the validation subjects (never test): the mean over the unit's
  AUs of the F1 at threshold 0 on each AU's balanced validation frames (as classify chooses C),
  and training stops after ``patience`` epochs without a better one;
- **the threshold** is 0 on the score, or with ``tune_threshold`` the F1-best threshold on all
  of the validation subjects' frames (unbalanced, as test);
- **a checkpoint per epoch** lives under ``results/<ds>/models/.<run>.partial/<unit>/``; a
  finished unit is kept there, so a killed run resumes at the epoch it was in and skips
  finished units. The same settings and seed give the same final model on CPU.

Outputs (as ``featbench classify``'s; ``clf`` = ``ft``)::

    results/<ds>/<model>__<region>__ft[__tags].csv   per-AU metrics + mean
    results/<ds>/summary.csv                         the run's row: weights, head, reinit...
    results/<ds>/predictions/<run>.h5                test frames' scores and decisions
    results/<ds>/models/<run>/model.safetensors      each unit's trained network (``<AU>``,
                                                     ``<region>``; ``-<fold>`` per fold)
    results/<ds>/models/<run>/manifest.json          what loads them (:mod:`featbench.core.modelfile`;
                                                     :func:`load_unit`)
    results/<ds>/models/<run>/settings.json          every setting, per-unit epoch, thresholds
    results/<ds>/models/<run>/<unit>.log.csv, .png   per-epoch log and curves

Run-name tags for non-default settings: ``ml`` (multilabel), ``fc67`` (``--reinit fc6-fc7``),
``headonly`` (``--reinit head``), ``from<layer>`` (``--train-from``), then classify's
(``thr``, protocol, ``s<seed>``, AU subset) and ``--tag``.

``featbench extract --model M --weights results/<ds>/models/<run>/model.safetensors`` extracts
the fine-tuned network's codes into ``data/features/<ds>/<M>-ft.h5`` (weights identity
``finetuned:<run> sha256:...``), for ``featbench classify --model <M>-ft``.
"""

from dataclasses import asdict, dataclass

import numpy as np

from featbench.core.align import ensure_aligned
from featbench.core.aus import AU_REGION, REGIONS
from featbench.core.errors import UsageError, did_you_mean
from featbench.core.facesource import FaceInput, FaceSource, balanced_rows, draw_augmentation
from featbench.core.modelfile import open_model
from featbench.core.workspace import Workspace, run_lock

from classify.ft_net import (HEADS, REINITS, check_choice, check_input_size, create_finetune_net,
                             logit_difference, unit_network)
from classify.learn.facerun import face_plan, face_run
from classify.learn.loop import unit_state
from classify.infer import score_batches
from classify.learn.method import Method, Unit, UnitData, counts, trainable
from classify.task import OCCURRENCE, get_task
from classify.learn.writer import recording_failure
from classify.netkinds import FT
from classify.plan import resolve_aus, run_key
from classify.run import format_result as classify_format
from classify.training import TrainConfig
from extract.encoders import autocast_dtype, resolve_device
from extract.registry import get_spec
from extract.weights import parse_weights

REGION_CHOICES = ("full",) + REGIONS + ("auto",)


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
        self.train_config()  # the fit settings checked by their own rules, before any training
        if int(self.batch_size) < 2:
            raise UsageError(f"--batch-size must be at least 2, got {self.batch_size}")
        check_input_size(self.input_size)  # a huge one is refused as such, not tried ("too small")
        if self.tag is not None and (not str(self.tag).isalnum()):
            raise UsageError(f"--tag must be letters and digits only, got {self.tag!r}")


    def train_config(self, fold=0):
        """The :class:`~classify.training.TrainConfig` of fold ``fold``'s networks (its seed
        offset by the fold)."""
        return TrainConfig(epochs=int(self.epochs), lr=float(self.lr), optimizer=self.optimizer,
                           momentum=float(self.momentum), weight_decay=float(self.weight_decay),
                           patience=self.patience, seed=int(self.seed) + fold, device=self.device)


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


def finetune_run_name(config, table, *, task=OCCURRENCE):
    """Return the run name of ``config`` on ``table``: ``<model>__<region>__ft[__tags]`` (a task
    other than occurrence adds its name), through the one naming rule
    (:func:`classify.plan.run_key`)."""
    task = get_task(task)
    default_aus = resolve_aus(table, config.protocol, task=task)
    aus = resolve_aus(table, config.protocol, config.aus, task=task)
    return str(run_key(get_spec(config.model).name, config.region, "ft",
                       variant=variant_tags(config), protocol=config.protocol,
                       tune_threshold=config.tune_threshold, seed=config.seed, aus=aus,
                       default_aus=default_aus, after=(config.tag,) if config.tag else (),
                       task_tag=FT.task_tag(task)))


def variant_tags(config):
    """The run-name tags that say how ``config``'s network is fine-tuned (a tuple)."""
    tags = []
    if config.head == "multilabel":
        tags.append("ml")
    tags += {"fc6-fc7": ["fc67"], "head": ["headonly"]}.get(config.reinit, [])
    if config.train_from:
        tags.append("from" + "".join(ch for ch in str(config.train_from) if ch.isalnum()))
    return tuple(tags)


# --- the method ----------------------------------------------------------------------------------
class FinetuneMethod(Method):
    """Fine-tuned CNNs as a :class:`classify.learn.method.Method` (see the module docstring).

    Parameters
    ----------
    config : FinetuneConfig
    aligned_path : path
        The aligned-face cache, in the frame table's row order.
    task : Task
    """

    kind = "ft"

    def __init__(self, config, aligned_path, task=OCCURRENCE):
        super().__init__(task)
        self.config, self.aligned_path = config, aligned_path
        self.spec = get_spec(config.model)
        self.input_size = int(config.input_size or self.spec.input_size)
        self.device = resolve_device(config.device)
        self.dtype = autocast_dtype(self.device)
        self.tune = bool(config.tune_threshold)
        self._sources = {}

    def units(self, aus):
        return make_units(aus, self.config.head, self.config.region)

    def source(self, region):
        """The face source of ``region``: crops resized to the input size here."""
        if region not in self._sources:
            self._sources[region] = FaceSource(self.aligned_path,
                                               FaceInput(region, self.input_size, resize_full=True))
        return self._sources[region]

    def unit_data(self, job):
        """Labelled training rows; per AU its balanced validation rows (fixed for the run, as
        classify chooses C on them) and their union; every labelled validation row."""
        y, rows, src = job.y, job.rows, self.source(job.unit.region)
        for part in ("train", "validation", "test"):
            src.check_crops(rows[part])
        labelled = {p: rows[p][(y[rows[p]] >= 0).any(axis=1)] for p in ("train", "validation")}
        va_all, bal = labelled["validation"], []
        for j, au in enumerate(job.unit.aus):
            r = va_all[y[va_all, j] >= 0]
            bal.append(r[self.task.balance(y[r, j], np.random.default_rng(
                [self.config.seed, job.fold, int(au[2:])]))])
        val_rows = np.unique(np.concatenate(bal)) if bal else np.zeros(0, np.int64)
        y_val = np.full((len(val_rows), y.shape[1]), -1, y.dtype)
        for j, b in enumerate(bal):
            y_val[np.searchsorted(val_rows, b), j] = y[b, j]
        c = counts(y, rows, self.task)
        return UnitData(trainable(c), c, {"train": labelled["train"], "val_all": va_all,
                                          "val_rows": val_rows, "y_val": y_val})

    def build(self, job, data):
        cfg = self.config
        return create_finetune_net(self.spec, cfg.weights, reinit=cfg.reinit,
                                   outputs=2 if cfg.head == "per-au" else len(job.unit.aus),
                                   train_from=cfg.train_from, input_size=cfg.input_size, seed=cfg.seed)

    def train_config(self, job):
        return self.config.train_config(job.fold)

    def train_batches(self, job, data):
        """Per epoch the union of the AUs' balanced draws, shuffled, augmented, read ahead."""
        import torch

        y, tr, src, cfg = job.y, data.extra["train"], self.source(job.unit.region), self.config

        def batches(epoch, rng):
            sample = rng.permutation(balanced_rows(y, tr, rng, self.task.balance))
            pw = self.pos_weight(y[sample])
            aug = draw_augmentation(rng, len(sample), src.size) if cfg.augment else None
            for _, idx, imgs in src.batches(sample, int(cfg.batch_size), aug=aug, min_size=2):
                yield torch.from_numpy(imgs), torch.from_numpy(y[idx].astype(np.float32)), pw

        return batches

    def forward(self, net, x):
        return self.to_scores(net(x).float())

    def to_scores(self, logits):
        """An AU's score: ``logit(present) - logit(absent)`` (per-au), else its logit."""
        return logit_difference(logits) if self.config.head == "per-au" else logits

    def scores(self, net, job, data, part):
        if part == "validation":
            rows, y = data.extra["val_rows"], data.extra["y_val"]
        elif part == "threshold":  # every labelled validation frame (unbalanced, as test)
            rows = data.extra["val_all"]
            y = job.y[rows]
        else:
            rows, y = job.rows["test"], None
        return y, self.score_faces(net, self.source(job.unit.region), rows)

    def score_faces(self, net, source, rows):
        """The (len(rows), k) scores of ``rows`` of ``source`` (per-au: one column)."""
        import torch

        batches = (torch.from_numpy(imgs)
                   for _, _, imgs in source.batches(rows, 2 * int(self.config.batch_size)))
        return score_batches(net, batches, device=self.device, dtype=self.dtype,
                             to_scores=self.to_scores,
                             width=1 if self.config.head == "per-au" else 0)

    def state(self, net):
        return net.export_state()

    def load_state(self, net, state):
        return net.load_exported(state)

    # --- the run's records (classify.learn.facerun) -------------------------------------------
    def settings_json(self):
        return {k: v for k, v in asdict(self.config).items() if k != "device"}

    def model_settings(self, aus, splits, info):
        cfg = self.config
        return {"config": asdict(cfg), "network": _network(info),
                "face_input": {u.name: self.source(u.region).input.to_json() for u in self.units(aus)},
                "score": "logit(present) - logit(absent)" if cfg.head == "per-au" else "the AU's logit"}

    def preprocessing(self, aus, info):
        prep = info["preprocessing"]
        return {"model": self.spec.name, "input_size": info["input_size"], "mean": prep.get("mean"),
                "std": prep.get("std"), "regions": {a: u.region for u in self.units(aus) for a in u.aus}}

    def row_extra(self, record, au):
        """ft's own columns of the run's table: the first fold's epoch and validation score (the
        task's headline metric: F1, an intensity run's ICC), the head."""
        fit = record.by[(0, au)]["unit"].fit
        return {"best_epoch": fit.get("best_epoch", ""),
                f"val_{self.task.METRICS[0]}": fit.get("val_score", float("nan")),
                "head": self.config.head}

    def record(self, info):
        return {"config": asdict(self.config), "network": _network(info),
                "frozen_parameters": info["frozen"]}

    prediction_attrs = Method.prediction_attrs + ("head", "reinit")


def _network(info):
    return {k: v for k, v in info.items() if k != "frozen"}


# --- the run -------------------------------------------------------------------------------------
def finetune_run(workspace, dataset, config=None, *, table=None, aligned_path=None, progress=True,
                 task=OCCURRENCE, scheduler=None, **kwargs):
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
    task : Task or str
        What the networks learn (:mod:`classify.task`; default: AU occurrence; any
        registered task). Another task's name is a run-name tag.
    scheduler : str, optional
        Train the networks on the Dask cluster at this address (``DASK_SCHEDULER_ADDRESS``
        by default; :mod:`classify.learn.pool`); under torchrun each rank takes a share.

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
    config = config or FinetuneConfig(**kwargs)
    workspace = Workspace(workspace) if not isinstance(workspace, Workspace) else workspace
    spec = get_spec(config.model)
    parse_weights(config.weights, spec)  # a missing file fails before any data is read
    if table is None:
        from featbench.core.datasets import load_dataset

        table = load_dataset(dataset, workspace=workspace, progress=progress)
    task = get_task(task).at_threshold(table.label_threshold)
    task.check_table(table)
    au_list = resolve_aus(table, config.protocol, config.aus, task=task)
    run = finetune_run_name(config, table, task=task)
    meta = {"model": spec.name, "region": config.region, "clf": "ft", "weights": "",
            "head": config.head, "reinit": config.reinit, "train_from": config.train_from or "",
            "protocol": config.protocol, "dataset": dataset,
            "tune_threshold": bool(config.tune_threshold), "seed": config.seed}
    # the run folder's lock first: a second identical run is refused now, not recorded
    with run_lock(workspace.models_dir(dataset, run)):
        with recording_failure(workspace, dataset, run, meta):
            info = check_network(config)
            meta["weights"] = info["weights"]
            aligned_path = aligned_path or ensure_aligned(table, workspace, progress=progress)
        meta.update(input_size=info["input_size"], epochs=config.epochs)
        method = FinetuneMethod(config, aligned_path, task)
        return face_run(method, face_plan(method, workspace, table, run=run, aus=au_list, meta=meta,
                                          protocol=config.protocol, seed=config.seed, kind=FT,
                                          progress=progress, scheduler=scheduler), info=info)


def check_network(config):
    """Build ``config``'s network once and return its info (see :func:`create_finetune_net`).

    Weights of another architecture, an unknown ``--train-from`` layer, an input size that
    does not fit: all fail here, before any face is read.
    """
    _, info = create_finetune_net(get_spec(config.model), config.weights, outputs=2,
                                  reinit=config.reinit, train_from=config.train_from,
                                  input_size=config.input_size, seed=config.seed)
    return info


def load_unit(models_dir, unit="model", *, device="cpu"):
    """Return ``(net, settings)``: a trained unit of a finetune run, ready for uint8 faces.

    Parameters
    ----------
    models_dir : path
        ``results/<ds>/models/<run>/`` (or the run's export file).
    unit : str
        ``model`` (multilabel, one region), an AU (per-au) or a region (multilabel, auto);
        ``-<fold>`` after it in a multi-fold run.
    """
    model = open_model(models_dir)
    settings = model.manifest["settings"]
    if unit not in model.groups:
        raise UsageError(did_you_mean(unit, model.groups, what=f"unit of {model.manifest['run']}"))
    return unit_network(settings, unit, unit_state(model, unit)).to(device).eval(), settings


def format_result(result):
    """Return the one-screen text of a finetune run (classify's table) and its summary line."""
    meta = result["meta"]
    text = classify_format({**result, "meta": {**meta, "n_train": _n_train(result)}})
    epochs = ", ".join(f"{u} {r.get('best_epoch', '-')}" for u, r in list(result["units"].items())[:12])
    return (text + f"\nhead {meta['head']}, reinit {meta['reinit']}, weights {meta['weights']}, "
            f"input {meta['input_size']} px; best epoch per unit: {epochs}")


def _n_train(result):
    return int(max((r["n_train"] for r in result["rows"]), default=0))
