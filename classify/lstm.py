"""The LSTM over code sequences (``featbench classify --clf lstm``), as the paper ran it.

PROTOCOL.md: on a network's codes, one LSTM per AU with one hidden layer of 200 units and a
binary output, trained with SGD (lr 1e-4, momentum 0.9) and Gaussian weight noise (std 0.1)
put on the weights before each batch's gradient; training and validation sequences are cut
around each run of activation (3 extra frames before and after), long inactive stretches
(500-1000 frames) dropped; test scores each subject's whole sequence.

What this module holds, stated once
-----------------------------------
**Sequences** (:func:`cut_track`, :func:`cut_sequences`). A sequence is a stretch of one
subject's video whose frames follow each other (frame numbers consecutive) and all have codes;
a frame without codes -- or, in training and validation, without a label for the AU -- ends
a sequence, and the breaks are counted and reported, never bridged. Subject (and video)
boundaries always end a sequence. In ``train`` mode (training and validation) each run of
activation with ``context`` frames either side becomes one sequence (runs that close merge) and
each inactive stretch between runs another, dropped when it is ``drop_gap`` frames or longer
(the paper's "long inactive stretches of 500-1000 frames"; default 500). ``test`` mode keeps
every frame: each test subject's whole sequence, in frame order. Without balancing
(``--no-balance``) training and validation use whole sequences too.

**The network** (:class:`SequenceLSTM`): z-scoring with the training subjects' mean and std
(stored in the model, so that a saved network scores raw codes alone), one LSTM layer
(``--hidden``, ``--bidirectional``) and a linear output per AU (one AU: the paper's per-AU
model; ``--multilabel``: one network with an output per AU, trained on the frames that
label each AU). Batches are :class:`torch.nn.utils.rnn.PackedSequence` s: variable-length
sequences without padding to the longest.

**Training**: the LSTM is a method of the learning framework (:class:`LSTMMethod`,
:mod:`classify.learn`), trained by the shared fold x unit loop through THE loop,
:func:`classify.training.fit` (epoch chosen by F1 on the validation subjects' sequences, a
checkpoint per epoch that a rerun resumes, weight noise, AMP on CUDA), with the occurrence
task's masked binary cross-entropy *summed* over the frames of a batch (as CURRENNT, the toolkit
with per-batch weight noise, sums the error over time steps), which is what makes the paper's
small learning rate train. The protocol balances training per AU; a sequence cannot drop
negative frames the way rows do, so balancing weights each positive frame by the task's rule
(the training sequences' negatives / positives, clipped to [0.1, 10]) instead
(``--no-balance``: whole sequences, unweighted unless ``--class-weight balanced``). Batches hold sequences of similar length
(shuffled within buckets, bucket order shuffled) so that packing wastes few time steps. Scores are logits; a frame is called present
when its logit is > the threshold (0, or with ``--tune-threshold`` the F1-best one on the
validation subjects' whole sequences, scored as test is).

**The input weights** (what lets it learn from wide codes at all). PyTorch starts every LSTM
weight uniform in +-1/sqrt(hidden), made for inputs about as wide as the state; on 6,084
z-scored HOG dims each gate's input then starts as a random projection of std ~3 -- a
saturated random function of the face, mostly of *who* it is, which the network memorises on
the training subjects (training AUC above 0.9 after one epoch) and which carries nothing to new
subjects (test AUC 0.46 on AU25 where a linear model on the same codes reaches 0.80). So for
a code wider than the state the input weights start at zero: what they learn lies in the span
of the training codes, as a linear model's weights do. And the paper's weight noise (std 0.1 a
weight) on 6,084 input weights puts noise of std ~8 on every gate's input; there the input
weights' noise is scaled by sqrt(hidden / dims), the noise per gate that the recurrent weights
of a layer of ``hidden`` units get at the given std. A code no wider than the state keeps
PyTorch's initialisation and the paper's noise as they are.

Per-AU networks train in parallel worker processes on CPU (torch threads = cores // workers);
on CUDA they train one after another on the device.
"""

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from featbench.core.errors import StoreError, UsageError
from featbench.core.modelfile import open_model

from featbench.core.aus import AU_REGION

from classify.codemethods import CodesInput, FitSettings
from classify.learn.loop import unit_state, write_model
from classify.learn.method import Method, Unit, UnitData, counts, trainable
from classify.lstm_net import build_model, network_of
from classify.training import TrainConfig
from extract.encoders import resolve_device, run_network


# --- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LSTMOptions:
    """What a user varies for ``--clf lstm``; the defaults are the paper's.

    Attributes
    ----------
    hidden : int
        Units of the LSTM layer (paper: 200).
    epochs : int
        At most this many epochs; the epoch is chosen on the validation subjects.
    lr : float
        SGD learning rate (paper: 1e-4; momentum 0.9).
    weight_noise : float
        Std of the Gaussian noise on the weights for each training batch (paper: 0.1).
    bidirectional : bool
        A bidirectional LSTM (test scores whole sequences offline, so it may look ahead).
    context : int
        Frames kept before and after each run of activation (paper: 3).
    drop_gap : int
        Inactive stretches this long or longer are dropped in training and validation (paper:
        500-1000).
    multilabel : bool
        One network with one output per AU instead of one network per AU.
    batch : int
        Sequences per batch.
    patience : int or None
        Stop after this many epochs without a better validation F1.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    hidden: int = 200
    epochs: int = 25
    lr: float = 1e-4
    weight_noise: float = 0.1
    bidirectional: bool = False
    context: int = 3
    drop_gap: int = 500
    multilabel: bool = False
    batch: int = 16
    patience: object = 5
    device: str = "auto"

    def __post_init__(self):
        checks = (("--hidden", self.hidden, 1), ("--epochs", self.epochs, 1),
                  ("--context", self.context, 0), ("--drop-gap", self.drop_gap, 1),
                  ("--batch", self.batch, 1))
        for flag, value, low in checks:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise UsageError(f"{flag} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_noise, (int, float)) and np.isfinite(self.weight_noise)
                and self.weight_noise >= 0):
            raise UsageError(f"--weight-noise must be a number >= 0, got {self.weight_noise!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise UsageError(f"--patience must be an integer >= 1, got {self.patience!r}")
        resolve_device(self.device)  # an unknown or absent device says so now, not mid-run

    def tag(self):
        """Return the run-name tag of the non-default settings (None for the paper's)."""
        d, parts = LSTMOptions.__dataclass_fields__, []
        short = {"hidden": "h", "epochs": "e", "lr": "lr", "weight_noise": "wn", "context": "c",
                 "drop_gap": "gap", "batch": "b", "patience": "p"}
        if self.multilabel:
            parts.append("ml")
        if self.bidirectional:
            parts.append("bi")
        for name, prefix in short.items():
            value = getattr(self, name)
            if value != d[name].default:
                parts.append(f"{prefix}{'none' if value is None else format(value, 'g')}")
        return "-".join(parts) or None

    def train_config(self, seed=0):
        """Return the :class:`classify.training.TrainConfig` of these options."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, momentum=0.9, optimizer="sgd",
                           patience=self.patience, monitor="val_score",
                           weight_noise=self.weight_noise, seed=seed, device=self.device,
                           amp=True, channels_last=False)


def options_from(value):
    """Return :class:`LSTMOptions` from None, a dict of option values or the options."""
    if value is None:
        return LSTMOptions()
    if isinstance(value, LSTMOptions):
        return value
    unknown = set(value) - set(LSTMOptions.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown LSTM option(s): {', '.join(sorted(unknown))}")
    return LSTMOptions(**value)


# --- sequences ---------------------------------------------------------------------------------
def cut_track(y, *, mode="train", context=3, drop_gap=500):
    """Cut one unbroken track (consecutive frames of one video, all with codes) into sequences.

    Parameters
    ----------
    y : array of shape (n,) or (n, k)
        Labels in frame order: 1 present, 0 absent, -1 unlabelled. With several columns (the
        multilabel network) a frame is active when any AU is present and unlabelled when no AU
        is labelled.
    mode : {"train", "whole", "test"}
        ``train``: unlabelled frames break the track; each run of activation with ``context``
        frames either side is one sequence (runs closer than that merge), each inactive
        stretch between them another, dropped when it is ``drop_gap`` frames or longer;
        ``whole``: unlabelled frames break the track, nothing else is cut; ``test``: the
        whole track.
    context, drop_gap : int

    Returns
    -------
    list of (start, stop)
        Half-open index ranges into the track, in order, none empty.
    """
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    n = len(y)
    if mode == "test":
        return [(0, n)] if n else []
    if mode not in ("train", "whole"):
        raise ValueError(f"mode must be train, whole or test, got {mode!r}")
    labelled = (y >= 0).any(axis=1)
    if mode == "whole":
        return _runs(labelled)
    active = (y == 1).any(axis=1)
    near = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(active & labelled)
    if idx.size:  # frames within `context` of an active frame
        diff = np.zeros(n + 1, dtype=np.int64)
        np.add.at(diff, np.maximum(idx - context, 0), 1)
        np.add.at(diff, np.minimum(idx + context + 1, n), -1)
        near = np.cumsum(diff[:-1]) > 0
    out = []
    for s, e in _runs(labelled):  # unlabelled frames break the track
        runs = [(a + s, b + s, True) for a, b in _runs(near[s:e])]
        runs += [(a + s, b + s, False) for a, b in _runs(~near[s:e]) if b - a < drop_gap]
        out += [(a, b) for a, b, _ in sorted(runs)]
    return out


def _runs(mask):
    """Return the (start, stop) ranges of the true runs of a boolean array."""
    m = np.r_[False, np.asarray(mask, dtype=bool), False].astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


@dataclass
class Cut:
    """Sequences of table rows and what breaking them cost."""

    sequences: list = field(default_factory=list)
    frames: int = 0
    missing_breaks: int = 0    # a frame number skipped inside a video (no codes / no frame)
    unlabelled: int = 0        # frames left out because the AU(s) had no label there
    dropped_inactive: int = 0  # frames of long inactive stretches left out

    def report(self):
        """Return a JSON-ready dict of the counts."""
        return {"sequences": len(self.sequences), "frames": self.frames,
                "breaks_at_missing_frames": self.missing_breaks,
                "unlabelled_frames_left_out": self.unlabelled,
                "inactive_frames_dropped": self.dropped_inactive}


def cut_sequences(rows, group, frame, y, *, mode, context=3, drop_gap=500):
    """Cut table rows of one part (train / validation / test subjects) into sequences.

    Parameters
    ----------
    rows : array of int
        Table rows that have codes (any order).
    group : array of int, indexed by table row
        One id per (subject, video): a sequence never crosses it.
    frame : array of int, indexed by table row
        Frame numbers; a skipped number (a frame without codes) breaks the sequence.
    y : array, indexed by table row, of shape (n,) or (n, k)
    mode : {"train", "whole", "test"}
        As :func:`cut_track`.

    Returns
    -------
    Cut
        ``sequences``: arrays of table rows in frame order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = Cut()
    if rows.size == 0:
        return out
    rows = rows[np.lexsort((frame[rows], group[rows]))]
    g, f = group[rows], frame[rows]
    new_group = np.r_[True, g[1:] != g[:-1]]
    jump = np.r_[False, (f[1:] != f[:-1] + 1) & ~new_group[1:]]
    out.missing_breaks = int(jump.sum())
    starts = np.flatnonzero(new_group | jump)
    y = np.asarray(y)
    for s, e in zip(starts, np.r_[starts[1:], rows.size]):
        track = rows[s:e]
        yt = y[track]
        pieces = cut_track(yt, mode=mode, context=context, drop_gap=drop_gap)
        if mode != "test":
            lab = (yt >= 0).any(axis=1) if yt.ndim > 1 else yt >= 0
            out.unlabelled += int((~lab).sum())
            out.dropped_inactive += int(lab.sum()) - sum(b - a for a, b in pieces)
        out.sequences += [track[a:b] for a, b in pieces]
    out.frames = int(sum(len(s) for s in out.sequences))
    return out


# --- the network -------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def fit_scaler(X):
    """Return (mean, std) of the rows ``X`` (std 1 where a feature is constant)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[~(std > 0)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def pack(seqs):
    """Return ``(PackedSequence of the codes, packed order of the rows)`` for a list of
    ``(codes (len, dims), rows (len,))`` pairs."""
    torch = _torch()
    from torch.nn.utils.rnn import pack_sequence

    x = pack_sequence([torch.as_tensor(c) for c, _ in seqs], enforce_sorted=False)
    order = pack_sequence([torch.as_tensor(r) for _, r in seqs], enforce_sorted=False).data
    return x, order


def score_sequences(model, X, pos, sequences, *, device="cpu", batch_frames=20000):
    """Return ``{table row: logits (n_out,)}`` as an array: logits of every row of ``sequences``.

    Parameters
    ----------
    model : SequenceLSTM
    X : array (n_codes, dims)
    pos : array mapping a table row to its row of ``X``
    sequences : list of arrays of table rows
        Scored each as one whole sequence, in order, in batches of about ``batch_frames``.

    Returns
    -------
    rows : array (m,) of table rows, logits : array (m, n_out) float32
    """
    model.eval()
    rows_out, logits_out = [], []
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    i = 0
    while i < len(order):
        batch, n = [], 0
        while i < len(order) and (not batch or n + len(sequences[order[i]]) <= batch_frames):
            s = sequences[order[i]]
            batch.append((np.asarray(X[pos[s]], dtype=np.float32), s))
            n += len(s)
            i += 1
        x, rows = pack(batch)
        rows_out.append(rows.numpy())
        logits_out.append(run_network(model, x.to(device)).cpu().numpy())
    if not rows_out:
        return np.zeros(0, dtype=np.int64), np.zeros((0, model.n_out), dtype=np.float32)
    return np.concatenate(rows_out), np.concatenate(logits_out)


# --- the method --------------------------------------------------------------------------------
class LSTMMethod(CodesInput, Method):
    """The LSTM as a :class:`classify.learn.method.Method` (see the module docstring).

    Parameters
    ----------
    options : LSTMOptions
    codes : dict of region -> array (n_codes, dims) or the path of a ``.npy`` of it
    pos, group, frame : arrays by table row
        The row of a frame's codes (-1: none), its video's id, its frame number.
    fit : classify.codemethods.FitSettings
        Region, seed, task; ``tune_threshold``, ``balance``, ``class_weight`` (``balanced``:
        positive frames weighted) as ``featbench classify``'s flags.
    workers : int
        Networks trained at once (worker processes; CPU only).
    subjects : str
        The table's fingerprint (part of every unit's identity).
    """

    kind = "lstm"
    reduction = "sum"  # summed over the frames of a batch, as CURRENNT sums over time steps

    def __init__(self, options, codes, pos, group, frame, fit, *, workers=1, subjects=""):
        super().__init__(fit.task)
        self.options, self.codes, self.pos, self.group, self.frame = options, codes, pos, group, frame
        self.seed, self.tune, self.balance = fit.seed, fit.tune_threshold, fit.balance
        self.class_weight, self.region, self.subjects = fit.class_weight, fit.region, subjects
        self.workers, self.device = workers, resolve_device(options.device)

    def units(self, aus):
        """One network per AU (the paper), or with ``multilabel`` one per region over its AUs."""
        region_of = {a: AU_REGION[a] if self.region == "auto" else self.region for a in aus}
        if not self.options.multilabel:
            return [Unit(au, (au,), region_of[au]) for au in aus]
        regions = list(dict.fromkeys(region_of.values()))
        return [Unit("multilabel" if len(regions) == 1 else f"multilabel_{r}",
                     tuple(a for a in aus if region_of[a] == r), r) for r in regions]

    def identity(self):
        return {"options": asdict(self.options), "seed": self.seed, "balance": self.balance,
                "class_weight": self.class_weight, "subjects": self.subjects,
                **self.task.identity()}

    def unit_data(self, job):
        """Cut the fold's training and validation rows into sequences (the trainable AUs' labels),
        the whole test sequences, the z-scoring and the positive weight of the training frames."""
        c = counts(job.y, job.rows, self.task)
        cols = trainable(c)
        data = UnitData(cols, c, {"Y": job.y[:, cols]})
        if not cols:
            return data
        Y, o = data.extra["Y"], self.options
        mode = "train" if self.balance else "whole"
        act = np.where(Y >= 0, self.task.positive(Y), -1)  # cut around what the task calls present
        cut = {p: cut_sequences(job.rows[p], self.group, self.frame, act, mode=mode, context=o.context,
                                drop_gap=o.drop_gap) for p in ("train", "validation")}
        cut["threshold"] = cut_sequences(job.rows["validation"], self.group, self.frame, act, mode="test")
        cut["test"] = cut_sequences(job.rows["test"], self.group, self.frame, act, mode="test")
        if not cut["train"].sequences:
            raise UsageError("no training sequence (no training frame with codes and labels)")
        X, train_rows = self.X(job.unit.region), np.concatenate(cut["train"].sequences)
        weigh = self.balance or self.class_weight == "balanced"
        data.extra.update(cut=cut, scaler=fit_scaler(X[self.pos[train_rows]]),  # training only
                          pos_weight=self.pos_weight(Y[train_rows]) if weigh else None)
        data.info = {"sequences": {p: cut[p].report() for p in ("train", "validation", "test")}}
        breaks = {p: n for p, n in ((p, cut[p].missing_breaks) for p in ("train", "validation", "test")) if n}
        if breaks:
            data.notes.append("sequences broken at frames without codes: " +
                              ", ".join(f"{n} in {p}" for p, n in breaks.items()))
        return data

    def build(self, job, data):
        _torch().manual_seed(self.seed)
        mean, std = data.extra["scaler"]
        o = self.options
        net = build_model(self.X(job.unit.region).shape[1], len(data.trainable), hidden=o.hidden,
                          bidirectional=o.bidirectional, mean=mean, std=std)
        return net, {"weights": "", "dims": net.dims, "n_out": net.n_out, "hidden": net.hidden,
                     "bidirectional": net.bidirectional}

    def train_config(self, job):
        return self.options.train_config(self.seed)

    def train_batches(self, job, data):
        X, Y = self.X(job.unit.region), data.extra["Y"]
        seqs = [(np.asarray(X[self.pos[s]], dtype=np.float32), np.asarray(Y[s], dtype=np.float32))
                for s in data.extra["cut"]["train"].sequences]
        pw = data.extra["pos_weight"]

        def batches(epoch, rng):
            return ((x, y, pw) for x, y in _length_bucketed_batches(seqs, self.options.batch, rng))

        return batches

    def scores(self, net, job, data, part):
        """Validation: the cut sequences; threshold: the validation subjects' whole sequences;
        test: each test subject's whole sequence, in ``job.rows["test"]``'s order."""
        X, Y, cols = self.X(job.unit.region), data.extra["Y"], data.trainable
        seqs = data.extra["cut"][part].sequences
        rows, logits = score_sequences(net, X, self.pos, seqs, device=self.device)
        if part != "test":
            y = np.full((len(rows), job.y.shape[1]), -1, Y.dtype)
            s = np.full((len(rows), job.y.shape[1]), np.nan, np.float32)
            y[:, cols], s[:, cols] = Y[rows], logits
            return y, s
        test = job.rows["test"]
        out = np.full((len(test), job.y.shape[1]), np.nan, np.float32)
        where = {int(r): i for i, r in enumerate(test)}
        out[np.ix_([where[int(r)] for r in rows], cols)] = logits
        net.to("cpu")
        return None, out


def _length_bucketed_batches(train_data, batch, rng):
    """Yield packed ``(x, y)`` batches of ``batch`` sequences in a seeded random order.

    Sequences are grouped in buckets of similar lengths (8 batches each), so a batch pads little.
    """
    order = rng.permutation(len(train_data))
    span = batch * 8
    order = np.concatenate([sorted(order[i:i + span], key=lambda j: len(train_data[j][0]))
                            for i in range(0, len(order), span)]) if len(order) else order
    starts = rng.permutation(np.arange(0, len(order), batch))
    for i in starts:
        chunk = [train_data[j] for j in order[i:i + batch]]
        x, _ = pack([(c, np.zeros(len(c))) for c, _ in chunk])
        y, _ = pack([(t, np.zeros(len(t))) for _, t in chunk])
        yield x, y.data


# --- the kind: the method of a run on codes, its model ----------------------------------------
def lstm_method(plan, inputs):
    """The ``lstm`` kind's method over a run's opened codes (:class:`classify.driver.CodeInputs`):
    per-AU networks (the paper) train in parallel worker processes on CPU, one after another on
    CUDA; ``--multilabel`` trains one network per fold and region over its AUs."""
    table, options, n_jobs = plan.table, plan.options, plan.setting("n_jobs")
    group = (table.frames["subject"].astype(str) + "\x00" + table.frames["video"].astype(str)
             ).factorize()[0].astype(np.int64)
    frame = table.frames["frame"].to_numpy(dtype=np.int64)
    cores = os.cpu_count() or 1
    workers = 1 if str(resolve_device(options.device)).startswith("cuda") else (
        cores if n_jobs in (None, -1) else int(n_jobs))
    return LSTMMethod(options, inputs.codes, inputs.pos, group, frame, FitSettings.of(plan),
                      workers=workers, subjects=table.fingerprint())


def save_fits(folder, record):
    """The ``lstm`` kind's ``save`` (:data:`classify.netkinds.LSTM`): each trained network of a
    run once into ``folder`` (one tensor group per network, :mod:`featbench.core.modelfile`)."""
    results = record.results
    # the manifest lists the units that have a network (what rebuilds it: dims, hidden...); an
    # AU without one is said in settings.json (its error), as every kind says it
    units = {res.name: {**res.record(), **res.info, **res.saved(),
                        "model_file": f"{res.name}.safetensors"}
             for res in results if res.net is not None}
    if units:
        write_model(folder, record, preprocessing=record.inputs.preprocessing(record.plan),
                    units=units)


def load_model(path, unit):
    """Return ``(SequenceLSTM in eval mode, the unit's entry)`` of an LSTM run's unit (``AU01``,
    ``multilabel``...; ``-<fold>`` per fold) from its folder or export: thresholds and AUs in
    the entry."""
    model = open_model(path)
    entry = model.manifest["settings"]["units"].get(unit)
    if entry is None or unit not in model.groups:
        raise StoreError(f"{path}: no LSTM unit {unit!r} (it has {', '.join(model.groups)})")
    return network_of(entry, unit_state(model, unit)), entry
