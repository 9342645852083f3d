"""Inference: a trained run applied to new faces, and the one way a network scores.

Everything that turns a saved run into scores lives here, apart from training
(:mod:`classify.learn` trains; this module only applies):

:func:`score_batches`
    The one inference path of every learned network (training's validation and test scores,
    and predict's): batches through :func:`extract.encoders.run_network`.
:class:`Scorer`, :class:`RunModel`
    What predict needs of a trained run, declared (a ``typing.Protocol``, with
    :class:`AUClassifier`, :class:`TrackClassifier` and :class:`NetworkClassifier` for the
    per-AU pieces of a fold), and the one scorer every run kind loads into: codes (or faces,
    through the networks it carries) -> scores + decisions. Its identities are objects
    (:class:`~featbench.core.identity.RunKey`, :class:`~featbench.core.identity.WeightsId`,
    the :class:`~classify.task.Task`, the :class:`~classify.kinds.RunKind`), parsed once
    from the manifest.
:class:`NetworkScores`, :class:`NetworkOutput`
    Runs whose trained network *is* the classifier (fine-tuned CNNs, transfer runs).
:class:`LSTMScorer`
    One output of a saved LSTM carried along face tracks.

The run model
-------------
Every run kind (:mod:`classify.kinds`) loads into a :class:`RunModel`: per fold, per AU, an
object with ``decision_function(X)`` (or ``score_tracks(X, tracks)``, a sequence model) and the
threshold its run's decisions used; a vote holds its members. :meth:`RunModel.score` maps the
codes of a batch of faces to scores, 0/1 decisions and thresholds exactly as the run decided its
own test frames; :meth:`RunModel.networks` says which codes it needs, and
:meth:`RunModel.network_for` returns a network the run carries itself (fine-tuned and transfer
runs: :class:`NetworkScores`), which stands where a frozen encoder would.

A multi-fold run (``--protocol literature``/``kfold:K``) holds one classifier per fold and AU;
its folds vote like an ensemble's members.

An intensity run (``task`` = ``intensity``: ridge / SVR, or a learned method's Intensity task)
scores the predicted intensity clipped to 0-5, and its decision is that intensity rounded >= 2
(``score > 1.5``); its folds, and an intensity ensemble's members, are averaged, not voted. A
run trained on person-calibrated codes (``calibrate`` = ``median`` / ``neutral``,
:mod:`featbench.core.calibrate`) calibrates the codes of each face track the same way before
scoring: the batch must hold whole tracks (:meth:`RunModel.whole_tracks`); faces of a track too
short for a reference get nan scores.

Runs whose network is the classifier
------------------------------------
A ``featbench classify`` run reads codes of a frozen network and applies per-AU classifiers to
them; a ``featbench finetune`` or ``featbench transfer`` run maps aligned faces straight to
per-AU scores. Both fit :class:`RunModel`: the trained network stands where
the encoder stood (:class:`NetworkScores`: crops -> its scores) and each AU's "classifier" is
one column of those scores (:class:`NetworkOutput`), read through the classifier's
``codes_key`` = ``(network, weights, region)``. Their run kinds (:mod:`classify.netkinds`)
build them from a model file (a run folder or an export).

What is reproduced, from what each run did to its own test faces, all read from the run's
``manifest.json`` and its safetensors files:

``ft`` (:mod:`classify.finetune`)
    each unit (``model``, ``<AU>`` or ``<region>``; ``<unit>-<fold>`` per fold) rebuilt by
    :func:`classify.ft_net.unit_network`; its faces are what the unit's
    :class:`~featbench.core.facesource.FaceInput` (in the manifest) says, as the run's face
    source gave them; the score is the method's (``logit(present) - logit(absent)`` per-au, the
    AU's logit multilabel), the decision ``score > threshold`` with the unit's threshold.
``transfer`` (:mod:`classify.transfer`)
    stage 2's network rebuilt by :func:`classify.transfer_net.network_of`; full faces as the cache
    stores them (the network's first layer resizes them); the score is the AU's probability
    (sigmoid of the logit, as the run's predictions file stores it), the decision
    ``probability > threshold`` (the thresholds tuned on validation, as probabilities).

Every network scores through the one inference path of training
(:func:`score_batches`). The trained weights are read from the model
file when the network is opened, one unit at a time; the sha256 of the unit's safetensors file
(recorded in the manifest, kept by an export) is the weights identity
``finetuned:<run>[/<unit>] sha256:...``.
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

from featbench.core.calibrate import MIN_REFERENCE_FRAMES, CalibrationError, calibrate
from featbench.core.errors import UsageError
from featbench.core.identity import RunKey, WeightsId

from classify.kinds import RunKind, get_kind
from classify.task import OCCURRENCE, Task, get_task
from extract.encoders import autocast_dtype, resolve_device, run_network


# --- the one way a network scores ----------------------------------------------------------
def score_batches(net, batches, *, device, dtype=None, to_scores=None, width=0):
    """Return the (n, k) float32 scores of ``batches`` (inputs), the one way networks score.

    Each batch goes to ``device`` and through :func:`extract.encoders.run_network` (inference
    mode, autocast to ``dtype``); ``to_scores`` maps the network's outputs to scores (default:
    the outputs). ``width``: k of an empty result.
    """
    was = net.training
    if was:
        net.eval()
    out = []
    for x in batches:
        y = run_network(net, x, dtype=dtype, device=device)
        out.append((to_scores(y) if to_scores is not None else y).cpu().numpy())
    if was:
        net.train()
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


# --- what a run's scorer is -------------------------------------------------------------------
@runtime_checkable
class AUClassifier(Protocol):
    """One AU's classifier of one fold, on the codes of single faces (LDA, SVM, ridge...):
    ``decision_function(X)`` -> (n,) raw scores of ``X`` (n, dims)."""

    def decision_function(self, X): ...


@runtime_checkable
class TrackClassifier(Protocol):
    """One AU's classifier of one fold on sequences of codes along face tracks (an LSTM,
    :class:`LSTMScorer`): it carries state from batch to batch (:meth:`reset` forgets it);
    ``window`` is the frames a bidirectional one must see at once (None: it streams)."""

    window: Optional[int]

    def score_tracks(self, X, tracks): ...

    def reset(self): ...


@runtime_checkable
class NetworkClassifier(Protocol):
    """One AU's classifier that is one output of a network the run carries (a fine-tuned or
    transfer run, :class:`NetworkOutput`): ``codes_key`` = ``(model, WeightsId, region)`` names
    the output in :meth:`RunModel.score`'s ``codes``, ``network`` the carried network
    (:class:`NetworkScores`) that stands where an encoder would."""

    codes_key: tuple
    network: Any

    def decision_function(self, X): ...


@runtime_checkable
class Scorer(Protocol):
    """What ``featbench predict`` (:mod:`featbench.apply`) needs of a trained run; every run
    kind loads into one (:class:`RunModel`, through :func:`classify.kinds.load_scorer`).

    Identities are objects, strings only in the files (the manifest, the CSV, the sidecar):
    ``run`` a :class:`~featbench.core.identity.RunKey`, the networks' weights
    :class:`~featbench.core.identity.WeightsId` s, ``task`` the
    :class:`~classify.task.Task` that turns scores into decisions, ``kind`` the
    :class:`~classify.kinds.RunKind` of the registry.
    """

    run: RunKey
    dataset: str
    kind: RunKind
    task: Task
    aus: list
    alignment: dict
    calibrate: str
    members: list
    info: dict
    source: Any

    @property
    def clf(self) -> str: ...

    def networks(self) -> dict: ...

    def network_for(self, key): ...

    def weights_blob(self, weights): ...

    def input_size_for(self, key): ...

    def whole_tracks(self) -> bool: ...

    def window(self): ...

    def set_window(self, frames): ...

    def weights_text(self, key) -> str: ...

    def random_init(self, key) -> bool: ...

    def describe(self) -> str: ...

    def reset(self): ...

    def score(self, codes, tracks=None): ...


def _identity(manifest):
    """The typed identity fields of a run, from its manifest's strings (the one place they
    become objects): ``run``, ``dataset``, ``kind``, ``task``."""
    return {"run": RunKey.parse(manifest["run"]), "dataset": manifest["training_data"]["dataset"],
            "kind": get_kind(manifest["kind"]), "task": get_task(manifest.get("task") or "occurrence")}


# --- the scorer of a run ------------------------------------------------------------------------
@dataclass
class RunModel:
    """The one :class:`Scorer`: everything :func:`featbench.apply.predict.predict` needs from one run.

    Attributes
    ----------
    run : RunKey
        The run's identity (its name is ``str(run)``).
    dataset : str
        The data set it was trained on.
    kind : RunKind
        Its kind in the registry (:mod:`classify.kinds`); :attr:`clf` is its name (``lda``,
        ``svm``, ``vote``...).
    task : Task
        The task its networks learned (:func:`classify.task.get_task`): it turns scores
        into decisions (and, for intensity, clips them to 0-5).
    model : str
        The network's registry name (``hog``, ``alexnet``, ``timm:...``); ``""`` for a vote.
    weights : WeightsId or None
        The identity of the network's weights the codes came from (None: a vote, whose members
        read the networks).
    aus : list of str
    au_regions : dict of str -> str
        The region each AU's classifier reads (``full``, ``upper``, ``middle``, ``lower``).
    folds : list of dict
        Per fold, ``{au: (classifier, threshold)}`` (an :class:`AUClassifier`,
        :class:`TrackClassifier` or :class:`NetworkClassifier`); an AU without a classifier is
        absent.
    alignment : dict
        The alignment settings of the faces the codes came from (``featbench.core.align``).
    members : list of RunModel
        A vote's members (empty otherwise).
    scales : ndarray of shape (members, aus), optional
        A vote's members' score scales (see the module docstring).
    info : dict
        Provenance: protocol, featbench version and date of the run...
    source : ModelFile, optional
        The model file it was loaded from (an export carries the fine-tuned weights files whose
        codes a classify run reads: :meth:`weights_blob`).
    calibrate : {"none", "median", "neutral"}
        How the run's codes were calibrated per person (applied per face track here).
    """

    run: RunKey
    dataset: str
    kind: RunKind
    model: str
    weights: Optional[WeightsId]
    aus: list
    au_regions: dict = field(default_factory=dict)
    folds: list = field(default_factory=list)
    alignment: dict = field(default_factory=dict)
    members: list = field(default_factory=list)
    scales: object = None
    info: dict = field(default_factory=dict)
    source: object = None
    task: Task = OCCURRENCE
    calibrate: str = "none"
    #: a calibrated run's face tracks too short to calibrate so far: ``{track: faces}`` (their
    #: rows' AU columns are empty; predict's summary and sidecar say how many)
    uncalibrated: dict = field(default_factory=dict)

    @property
    def clf(self):
        """The kind's name: the ``clf`` of the run's key and of its tables."""
        return self.kind.name

    @classmethod
    def from_model_file(cls, model_file, folds, *, info=None):
        """A run of the codes of one network, from its model file's manifest and loaded ``folds``.

        Parameters
        ----------
        model_file : featbench.core.modelfile.ModelFile
        folds : list of dict
            Per fold, ``{au: (classifier, threshold)}``.
        info : dict, optional
            Kind-specific provenance added to the manifest's.
        """
        m = model_file.manifest
        prep = m.get("preprocessing") or {}
        return cls(**_identity(m), model=str(prep.get("model", "")),
                   weights=WeightsId.parse(m["weights"]), aus=list(m["aus"]),
                   au_regions=dict(prep.get("regions") or {}), folds=folds,
                   alignment=dict(prep.get("alignment") or {}), source=model_file,
                   info={"input_size": prep.get("input_size"), "layer": prep.get("layer"),
                         "created": m.get("created"), "featbench_version": m.get("featbench_version"),
                         "training_data": m["training_data"], **(info or {})},
                   calibrate=str(prep.get("calibrate") or "none"))

    @classmethod
    def vote_of(cls, model_file, members, scales):
        """A vote of the loaded ``members`` with their score ``scales``, from its model file."""
        m = model_file.manifest
        return cls(**_identity(m), model="", weights=None, aus=list(m["aus"]),
                   members=list(members), scales=scales, alignment=members[0].alignment,
                   source=model_file, info={"protocol": m["settings"].get("protocol")})

    # what it needs --------------------------------------------------------------------------
    def networks(self):
        """Return ``{(model, weights): set of regions}`` of every network this run reads."""
        if self.members:
            out = {}
            for m in self.members:
                for key, regions in m.networks().items():
                    out.setdefault(key, set()).update(regions)
            return out
        own = {}
        for fold in self.folds:
            for clf, _ in fold.values():
                if isinstance(clf, NetworkClassifier):
                    own.setdefault(clf.codes_key[:2], set()).add(clf.codes_key[2])
        return own or {(self.model, self.weights): set(self.au_regions.values())}

    def network_for(self, key):
        """Return the trained network a run carries for ``key`` = (model, weights), or None.

        Fine-tuned and transfer runs carry their network (:class:`NetworkScores`); a
        classify run names one that :func:`featbench.apply.encoders.open_encoder` builds.
        """
        for m in self.members:
            net = m.network_for(key)
            if net is not None:
                return net
        for fold in self.folds:
            for clf, _ in fold.values():
                if isinstance(clf, NetworkClassifier) and clf.codes_key[:2] == tuple(key):
                    return clf.network
        return None

    def weights_blob(self, weights):
        """``(file name, bytes)`` of the weights file of identity ``weights`` an export carries, or None."""
        own = self.source.carried(weights) if self.source is not None else None
        if own is not None:
            return own
        return next((b for b in (m.weights_blob(weights) for m in self.members) if b is not None), None)

    def input_size_for(self, key):
        """The face side the codes of ``key`` = (model, weights) were extracted at, or None."""
        if not self.members:
            return self.info.get("input_size") if (self.model, self.weights) == tuple(key) else None
        return next((s for s in (m.input_size_for(key) for m in self.members) if s), None)

    def whole_tracks(self):
        """True when the run (or a member) calibrates per face track: score whole tracks at once."""
        return self.calibrate != "none" or any(m.whole_tracks() for m in self.members)

    def window(self):
        """Frames a bidirectional sequence model must see at once (None: the run streams)."""
        wins = [m.window() for m in self.members]
        wins += [clf.window for fold in self.folds for clf, _ in fold.values()
                 if isinstance(clf, TrackClassifier)]
        wins = [w for w in wins if w]
        return min(wins) if wins else None

    def set_window(self, frames):
        """Let a bidirectional sequence model see ``frames`` frames at once (``--window``)."""
        for m in self.members:
            m.set_window(frames)
        for fold in self.folds:
            for clf, _ in fold.values():
                if isinstance(clf, TrackClassifier) and clf.window:
                    clf.window = int(frames)

    def weights_text(self, key):
        """``key``'s weights for people: random ones flagged, a trained network's start named."""
        text = key[1].describe()
        start = getattr(self.network_for(key), "start_weights", None)
        return f"{text}, from {start.describe()}" if start is not None else text

    def random_init(self, key):
        """True when ``key``'s weights are seeded-random or were trained from random ones."""
        start = getattr(self.network_for(key), "start_weights", None)
        return key[1].is_random or (start is not None and start.is_random)

    def describe(self):
        """One line: the run, its network(s) and weights (random weights flagged)."""
        nets = "; ".join(f"{key[0]} ({self.weights_text(key)})" for key in self.networks())
        return f"{self.run} [{self.clf}] on {nets}"

    # applying it ----------------------------------------------------------------------------
    def reset(self):
        """Forget the state a sequence model (LSTM) carries from one batch to the next."""
        for m in self.members:
            m.reset()
        for fold in self.folds:
            for clf, _ in fold.values():
                if isinstance(clf, TrackClassifier):
                    clf.reset()

    def score(self, codes, tracks=None):
        """Return scores, decisions and thresholds of every AU for a batch of faces.

        Parameters
        ----------
        codes : dict of (model, WeightsId, region) -> ndarray (n, dims)
            The codes of the batch's faces, for every key :meth:`networks` names.
        tracks : list of (track key, frame number), optional
            Per face, what it belongs to, in time order: a sequence model (LSTM) carries its
            state along a track from batch to batch while frame numbers follow each other;
            a calibrated run calibrates each track's codes. Needed by LSTM and calibrated runs.

        Returns
        -------
        scores : ndarray (n, k) float32
            Decision-function scores (nan where the run has no classifier for an AU).
        decisions : ndarray (n, k) int8
            1 present, 0 absent: the run's task's decision (occurrence: ``scores >
            threshold``), as the run decided its test frames.
        thresholds : ndarray (k,) float
        """
        task = get_task(self.task)  # how members and folds combine: the task's rule
        if self.members:
            parts = [m.score(codes, tracks) for m in self.members]
            cols = [[m.aus.index(a) for a in self.aus] for m in self.members]
            s = np.stack([p[0][:, c] for p, c in zip(parts, cols)])
            d = np.stack([p[1][:, c] for p, c in zip(parts, cols)])
            t = np.stack([p[2][c] for p, c in zip(parts, cols)])
            dec, sc, thr = task.combine(d, s, t, scales=self.scales)
            return sc, dec, thr
        codes = self._calibrated(codes, tracks)
        finite = {}  # per codes key: its rows with a score (one mask for every AU and fold)
        per_fold = [self._score_fold(fold, codes, tracks, finite) for fold in self.folds]
        if len(per_fold) == 1:
            return per_fold[0]
        # several folds: combined as an ensemble's members are (occurrence: each fold votes)
        dec, sc, thr = task.combine(np.stack([p[1] for p in per_fold]),
                                    np.stack([p[0] for p in per_fold]),
                                    np.stack([np.nan_to_num(p[2]) for p in per_fold]),
                                    scales=np.ones((len(per_fold), len(self.aus))))
        return sc, dec, thr

    def _score_fold(self, fold, codes, tracks, finite):
        """Scores, decisions and thresholds of one fold's classifiers (see :meth:`score`);
        ``finite``: ``{codes key: rows without nan}``, filled as keys are met."""
        task = self.task  # how a score becomes a decision (classify.task)
        n = len(next(iter(codes.values()))) if codes else 0
        s = np.full((n, len(self.aus)), np.nan, np.float32)
        d = np.zeros((n, len(self.aus)), np.int8)
        t = np.full(len(self.aus), np.nan)
        for a, au in enumerate(self.aus):
            if au not in fold or not n:
                continue
            clf, thr = fold[au]
            key = (clf.codes_key if isinstance(clf, NetworkClassifier)
                   else (self.model, self.weights, self.au_regions[au]))
            X = codes[key]
            if key not in finite:  # nan: a track too short to calibrate, no score
                finite[key] = np.isfinite(X).all(axis=1)
            ok = finite[key]
            if isinstance(clf, TrackClassifier):
                if tracks is None:
                    raise UsageError(f"run {self.run} scores sequences: pass the faces' tracks")
                raw = np.asarray(clf.score_tracks(X, tracks))
            elif ok.all():  # every row scored: no copy of the codes
                raw = np.asarray(clf.decision_function(X), dtype=np.float64)
            else:
                raw = np.full(n, np.nan)
                if ok.any():
                    raw[ok] = np.asarray(clf.decision_function(X[ok]))
            raw = np.where(ok, task.output(raw), np.nan)  # intensity: clipped to the scale
            s[:, a], t[a] = raw.astype(np.float32), thr
            with np.errstate(invalid="ignore"):  # decided unrounded, as the run decided
                d[:, a] = task.decide(raw, thr)
        return s, d, t

    def _calibrated(self, codes, tracks):
        """``codes`` calibrated per face track as the run's codes were per person (nan for the
        faces of a track too short for a reference); unchanged for an uncalibrated run."""
        if self.calibrate == "none" or not codes:
            return codes
        if tracks is None:
            raise UsageError(f"run {self.run} calibrates each face track ({self.calibrate}): "
                             "pass the faces' tracks")
        persons = np.array([repr(t[0]) for t in tracks])
        names, counts = np.unique(persons, return_counts=True)
        keep = np.isin(persons, names[counts >= MIN_REFERENCE_FRAMES])
        for name, n in zip(names, counts):  # per track: too short, its rows stay empty
            if n < MIN_REFERENCE_FRAMES:
                self.uncalibrated[str(name)] = int(n)
        if not keep.any():
            raise CalibrationError(
                f"run {self.run} calibrates each face track ({self.calibrate}), which needs at "
                f"least {MIN_REFERENCE_FRAMES} frames of the face: a photo, or a face seen in one "
                "frame, cannot be calibrated (use a video, or a run trained with --calibrate none)")
        out = {}
        for key, c in codes.items():
            x = np.full(np.shape(c), np.nan, np.float32)
            x[keep] = calibrate(np.asarray(c)[keep], persons[keep], self.calibrate)
            out[key] = x
        return out


# --- runs whose trained network is the classifier ---------------------------------------------
class NetworkScores:
    """A trained network as predict's encoder: aligned uint8 faces -> its (n, outputs) scores.

    Parameters
    ----------
    tensors : callable
        ``tensors()`` -> the network's state (name -> array), read when the network is opened.
    sha256 : str
        The digest of the unit's safetensors file (the trained weights' identity).
    build : callable
        ``build(state)`` -> the network with ``state`` (name -> tensor) loaded.
    face_input : FaceInput
        What the network reads of the aligned faces.
    start_weights : WeightsId, optional
        The weights training started from (random ones are flagged in predict's outputs).
    to_scores : callable, optional
        The method's map from the network's outputs to its scores (fine-tuning's per-AU heads:
        ``logit(present) - logit(absent)``); None: the outputs.
    """

    def __init__(self, tensors, *, sha256, build, face_input, start_weights=None, to_scores=None):
        self.tensors, self.sha256, self.build, self.input = tensors, sha256, build, face_input
        self.start_weights, self.to_scores = start_weights, to_scores
        self._net, self.device, self._dtype = None, "cpu", None

    @property
    def input_size(self):
        return self.input.size

    def face_input(self, region):
        """What the network reads (:class:`FaceInput`; its unit's region)."""
        return self.input

    def open(self, device="auto"):
        """Build the network on ``device`` (``auto``: CUDA when present); return self."""
        import torch

        self.device = resolve_device(device)
        state = {k: torch.from_numpy(np.array(v)) for k, v in self.tensors().items()}
        self._net = self.build(state).to(self.device).eval()
        self._dtype = autocast_dtype(self.device)  # AMP on CUDA, as the run scored its test faces
        return self

    def __call__(self, crops):
        """Return the (n, outputs) float32 scores of ``crops`` (n, S, S, 3) uint8."""
        import torch

        if self._net is None:
            self.open("cpu")
        return score_batches(self._net, [torch.from_numpy(np.ascontiguousarray(crops))],
                             device=self.device, dtype=self._dtype, to_scores=self.to_scores)


class NetworkOutput:
    """One AU's column of a :class:`NetworkScores`' output, as a classifier (a
    :class:`NetworkClassifier`).

    ``codes_key`` = ``(model, weights, region)`` (``weights`` a :class:`WeightsId`) names the
    output it reads in :meth:`RunModel.score`'s ``codes``; ``decision_function`` returns the
    column (``probability``: its sigmoid).
    """

    def __init__(self, network, model, weights, region, column, *, probability=False):
        self.network = network
        self.codes_key = (str(model), weights, str(region))
        self.column, self.probability = int(column), bool(probability)

    def decision_function(self, X):
        x = np.asarray(X, np.float64)[:, self.column]
        return 1.0 / (1.0 + np.exp(-x)) if self.probability else x


# --- a saved LSTM along face tracks -----------------------------------------------------------
#: frames a bidirectional LSTM sees at once in predict (``--window``): each track is scored
#: as whole sequences within a window, cut at its edges
BIDIRECTIONAL_WINDOW = 512


class LSTMScorer:
    """One output of a saved LSTM (:mod:`classify.lstm`) applied to tracks of faces.

    Unidirectional: streams. The LSTM's state is carried along each track from one batch to
    the next while its frame numbers follow each other (a frame without the face ends the
    sequence, as a frame without codes ends one in the run's test), so scoring a video batch by
    batch gives what scoring each whole sequence at once gives.

    Bidirectional: looks ahead, so it cannot stream frame by frame. Each call scores every run
    of consecutive frames of each track as one whole sequence, as the run scored its test
    sequences; predict calls it once per window of ``window`` frames (``--window``, default
    :data:`BIDIRECTIONAL_WINDOW`), so a track longer than the window is cut at the window's
    edges (frames near a cut see less context than in the run's test) and the window's aligned
    faces are held in memory (about 150 KB a face at 224 px).

    The network's own forward (:class:`classify.lstm_net.SequenceLSTM`, with its state) scores.

    Parameters
    ----------
    tensors : mapping of str -> array
        Its state dict, read when the network is first used (a model file's lazy group).
    output : int
        The AU's output of the network.
    build : callable
        ``build(state)`` -> the network with ``state`` (name -> tensor) loaded, in eval mode
        (:func:`classify.lstm_net.network_of` of the unit's settings).
    bidirectional : bool
        The network looks ahead: scored in windows (see above).
    """

    def __init__(self, tensors, output=0, *, build, bidirectional=False):
        self.tensors, self.output, self.build = tensors, int(output), build
        self.window = BIDIRECTIONAL_WINDOW if bidirectional else None
        self._net, self._state = None, {}

    def _network(self):
        if self._net is None:
            import torch

            self._net = self.build({k: torch.from_numpy(np.array(v)) for k, v in self.tensors.items()})
        return self._net

    def reset(self):
        self._state = {}

    def score_tracks(self, X, tracks):
        """Return (n,) logits of the faces ``X`` (n, dims) along ``tracks``
        (:meth:`RunModel.score`)."""
        import torch
        from torch.nn.utils.rnn import pack_sequence

        net = self._network()
        out = np.full(len(X), np.nan, np.float32)
        with torch.inference_mode():
            for key, idx, first in _segments(tracks):
                x = pack_sequence([torch.as_tensor(np.asarray(X[idx], np.float32))])
                prev = None if self.window else self._state.get(key)
                hx = prev[0] if prev is not None and prev[1] == first - 1 else None
                logits, hx = net(x, hx, state=True)
                out[idx] = logits[:, self.output].float().numpy()
                if not self.window:
                    self._state[key] = (hx, first + len(idx) - 1)
        return out


def _segments(tracks):
    """Yield ``(track key, row indices, first frame)`` of each run of consecutive frames of a track."""
    by_track = {}
    for i, (key, frame) in enumerate(tracks):
        by_track.setdefault(key, []).append((i, int(frame)))
    for key, rows in by_track.items():
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and rows[end][1] == rows[end - 1][1] + 1:
                end += 1
            yield key, [i for i, _ in rows[start:end]], rows[start][1]
            start = end
