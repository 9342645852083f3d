"""A finished run as something that can be applied to new faces: its network, classifiers, thresholds.

:func:`load_run` reads a run of the workspace into a :class:`RunModel`:

``lda`` / ``svm`` (``featbench classify``)
    ``results/<ds>/models/<run>/settings.json`` and one ``AUxx.joblib`` per AU and fold (the
    fitted ``Pipeline(StandardScaler, classifier)``), the threshold chosen on validation, the
    network and region the codes came from and the weights identity of the feature file.
``vote`` (``featbench ensemble``)
    its members (each loaded as above) and, from the members' predictions files, the scale of
    each member's scores on the frames the ensemble was scored on, so that a tie is broken on
    new frames exactly as :func:`classify.ensemble.majority_vote` broke it there.

``ft`` (``featbench finetune``) / ``transfer`` (``featbench transfer``)
    the trained network itself, which maps faces to per-AU scores, with the run's thresholds
    (:mod:`featbench.apply.netmodels`); its weights travel in the exported file.

A multi-fold run (``--protocol literature``/``kfold:K``) holds one classifier per fold and AU;
its folds vote like an ensemble's members.

:func:`export_run` writes a :class:`RunModel` to one self-contained file (classifiers, scalers,
thresholds, network name and weights identity, alignment settings, featbench and scikit-learn
versions); :func:`load_model_file` reads it back and refuses a file of another format or
library version with one line that says which. The file is a pickle (joblib): load only files
from people you trust.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from featbench import __version__
from featbench.core.aus import AU_REGION
from featbench.core.errors import (MissingRunError, StoreError, UsageError, WeightsError,
                                   did_you_mean)
from featbench.core.identity import RunKey, WeightsId
from featbench.core.results import read_summary
from featbench.core.workspace import Workspace, atomic_path

from classify.ensemble import align_members, majority_vote, read_predictions, score_scales
from classify.lstm import load_file, network_of

#: what an exported model file says it is, and the layout version this code reads
MODEL_FORMAT = "featbench-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class RunModel:
    """Everything :func:`featbench.apply.predict.predict` needs from one run.

    Attributes
    ----------
    run : str
        The run's name.
    dataset : str
        The data set it was trained on.
    clf : str
        ``lda``, ``svm``, ``vote``...
    model : str
        The network's registry name (``hog``, ``alexnet``, ``timm:...``); ``""`` for a vote.
    weights : str
        The identity of the network's weights (``WeightsId`` string form) the codes came from.
    aus : list of str
    au_regions : dict of str -> str
        The region each AU's classifier reads (``full``, ``upper``, ``middle``, ``lower``).
    folds : list of dict
        Per fold, ``{au: (pipeline, threshold)}``; an AU without a classifier is absent.
    alignment : dict
        The alignment settings of the faces the codes came from (``featbench.core.align``).
    members : list of RunModel
        A vote's members (empty otherwise).
    scales : ndarray of shape (members, aus), optional
        A vote's members' score scales (see the module docstring).
    info : dict
        Provenance: protocol, featbench version and date of the run...
    blobs : dict of str -> bytes
        An exported model's fine-tuned weights files, by weights identity (a classify run on a
        fine-tuned network's codes): the file is carried, as the network cannot be named.
    """

    run: str
    dataset: str
    clf: str
    model: str
    weights: str
    aus: list
    au_regions: dict = field(default_factory=dict)
    folds: list = field(default_factory=list)
    alignment: dict = field(default_factory=dict)
    members: list = field(default_factory=list)
    scales: object = None
    info: dict = field(default_factory=dict)
    blobs: dict = field(default_factory=dict)

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
                key = getattr(clf, "codes_key", None)
                if key is not None:
                    own.setdefault(key[:2], set()).add(key[2])
        return own or {(self.model, self.weights): set(self.au_regions.values())}

    def network_for(self, key):
        """Return the trained network a run carries for ``key`` = (model, weights), or None.

        Fine-tuned and transfer runs carry their network (:mod:`featbench.apply.netmodels`); a
        classify run names one that :func:`featbench.apply.predict.open_encoder` builds.
        """
        for m in self.members:
            net = m.network_for(key)
            if net is not None:
                return net
        for fold in self.folds:
            for clf, _ in fold.values():
                if getattr(clf, "codes_key", (None, None))[:2] == tuple(key):
                    return clf.network
        return None

    def weights_blob(self, weights):
        """The carried weights file of identity ``weights`` (an exported model), or None."""
        if weights in self.blobs:
            return self.blobs[weights]
        return next((b for b in (m.weights_blob(weights) for m in self.members) if b is not None), None)

    def input_size_for(self, key):
        """The face side the codes of ``key`` = (model, weights) were extracted at, or None."""
        if not self.members:
            return self.info.get("input_size") if (self.model, self.weights) == tuple(key) else None
        return next((s for s in (m.input_size_for(key) for m in self.members) if s), None)

    def window(self):
        """Frames a bidirectional sequence model must see at once (None: the run streams)."""
        wins = [m.window() for m in self.members]
        wins += [getattr(clf, "window", None) for fold in self.folds for clf, _ in fold.values()]
        wins = [w for w in wins if w]
        return min(wins) if wins else None

    def set_window(self, frames):
        """Let a bidirectional sequence model see ``frames`` frames at once (``--window``)."""
        for m in self.members:
            m.set_window(frames)
        for fold in self.folds:
            for clf, _ in fold.values():
                if getattr(clf, "window", None):
                    clf.window = int(frames)

    def weights_text(self, key):
        """``key``'s weights for people: random ones flagged, a trained network's start named."""
        text = WeightsId.parse(key[1]).describe()
        start = getattr(self.network_for(key), "start_weights", "")
        return f"{text}, from {WeightsId.parse(start).describe()}" if start else text

    def random_init(self, key):
        """True when ``key``'s weights are seeded-random or were trained from random ones."""
        start = getattr(self.network_for(key), "start_weights", "")
        return WeightsId.parse(key[1]).is_random or bool(start and WeightsId.parse(start).is_random)

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
                if hasattr(clf, "reset"):
                    clf.reset()

    def score(self, codes, tracks=None):
        """Return scores, decisions and thresholds of every AU for a batch of faces.

        Parameters
        ----------
        codes : dict of (model, weights, region) -> ndarray (n, dims)
            The codes of the batch's faces, for every key :meth:`networks` names.
        tracks : list of (track key, frame number), optional
            Per face, what it belongs to, in time order: a sequence model (LSTM) carries its
            state along a track from batch to batch while frame numbers follow each other.
            Needed by LSTM runs only.

        Returns
        -------
        scores : ndarray (n, k) float32
            Decision-function scores (nan where the run has no classifier for an AU).
        decisions : ndarray (n, k) int8
            1 present, 0 absent: ``scores > threshold``, as the run decided its test frames.
        thresholds : ndarray (k,) float
        """
        if self.members:
            parts = [m.score(codes, tracks) for m in self.members]
            cols = [[m.aus.index(a) for a in self.aus] for m in self.members]
            s = np.stack([p[0][:, c] for p, c in zip(parts, cols)])
            d = np.stack([p[1][:, c] for p, c in zip(parts, cols)])
            t = np.stack([p[2][c] for p, c in zip(parts, cols)])
            dec, sc = majority_vote(d, s, t, scales=self.scales)
            return sc, dec, np.zeros(len(self.aus))
        n = len(next(iter(codes.values()))) if codes else 0
        per_fold = []
        for fold in self.folds:
            s = np.full((n, len(self.aus)), np.nan, np.float32)
            d = np.zeros((n, len(self.aus)), np.int8)
            t = np.full(len(self.aus), np.nan)
            for a, au in enumerate(self.aus):
                if au not in fold or not n:
                    continue
                clf, thr = fold[au]
                X = codes[getattr(clf, "codes_key", None) or (self.model, self.weights, self.au_regions[au])]
                if hasattr(clf, "score_tracks"):
                    if tracks is None:
                        raise UsageError(f"run {self.run} scores sequences: pass the faces' tracks")
                    raw = np.asarray(clf.score_tracks(X, tracks))
                else:
                    raw = np.asarray(clf.decision_function(X))
                s[:, a], t[a] = raw.astype(np.float32), thr
                with np.errstate(invalid="ignore"):  # decided unrounded, as the run decided
                    d[:, a] = (raw > thr).astype(np.int8)
            per_fold.append((s, d, t))
        if len(per_fold) == 1:
            return per_fold[0]
        # several folds: each fold's classifier votes, as the members of an ensemble
        dec, sc = majority_vote(np.stack([p[1] for p in per_fold]),
                                np.stack([p[0] for p in per_fold]),
                                np.stack([np.nan_to_num(p[2]) for p in per_fold]),
                                scales=np.ones((len(per_fold), len(self.aus))))
        return sc, dec, np.zeros(len(self.aus))

    # the self-contained file -----------------------------------------------------------------
    def to_dict(self):
        """Return a plain dict of this run (classifiers included), what :func:`export_run` saves."""
        return {"run": self.run, "dataset": self.dataset, "clf": self.clf, "model": self.model,
                "weights": self.weights, "aus": list(self.aus), "au_regions": dict(self.au_regions),
                "folds": self.folds, "alignment": self.alignment,
                "members": [m.to_dict() for m in self.members],
                "scales": None if self.scales is None else np.asarray(self.scales).tolist(),
                "info": self.info, "blobs": dict(self.blobs)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["members"] = [cls.from_dict(m) for m in d.get("members", [])]
        if d.get("scales") is not None:
            d["scales"] = np.asarray(d["scales"], dtype=np.float64)
        return cls(**d)


# --- loading runs of a workspace -------------------------------------------------------------
def resolve_run(workspace, dataset, run):
    """Return the run name ``run`` stands for: ``best`` is the highest mean F1 of summary.csv.

    Raises
    ------
    MissingRunError
        No summary yet, or ``best`` with no successful run.
    """
    if run != "best":
        return str(run)
    df = read_summary(workspace, dataset)
    ok = df[df["mean_f1"].notna() & (df.get("error", "").fillna("") == "")] if "error" in df else \
        df[df["mean_f1"].notna()]
    if ok.empty:
        raise MissingRunError(f"{workspace.summary_csv(dataset)}: no successful run to pick as best")
    return str(ok.sort_values(["mean_f1", "run"], ascending=[False, True]).iloc[0]["run"])


def _known_runs(workspace, dataset):
    folder = workspace.results_dir(dataset)
    runs = {p.name for p in (folder / "models").glob("*") if p.is_dir() and not p.name.startswith(".")}
    runs |= {p.stem for p in (folder / "predictions").glob("*.h5")}
    return sorted(runs)


def load_run(workspace, dataset, run):
    """Load run ``run`` (or ``best``) of ``dataset`` from the workspace as a :class:`RunModel`.

    Raises
    ------
    MissingRunError
        Unknown run (the message lists the closest and where to see all).
    UsageError
        A run of a kind predict cannot apply yet.
    StoreError
        A model folder that lacks its files.
    """
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    run = resolve_run(workspace, dataset, run)
    key = RunKey.parse(run)
    known = _known_runs(workspace, dataset)
    if run not in known:
        raise MissingRunError(did_you_mean(run, known or ["(none yet)"], what=f"run of {dataset}",
                                           hint=f"runs with models in {workspace.results_dir(dataset)}: "
                                                + (", ".join(known) or "none; make one with featbench classify")))
    if {"calmed", "calneu"} & set(key.tags):  # never apply a calibrated run uncalibrated
        raise UsageError(f"run {run}: predict cannot apply person-calibrated runs yet "
                         "(use a run trained with --calibrate none)")
    loader = _LOADERS.get(key.clf)
    if loader is None:
        raise UsageError(f"run {run}: predict cannot apply {key.clf!r} runs yet "
                         f"(it applies {', '.join(sorted(_LOADERS))})")
    return loader(workspace, dataset, run)


def read_settings(folder, run):
    path = folder / "settings.json"
    if not path.exists():
        raise MissingRunError(f"{path}: run {run} has no saved models (rerun the run)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None


def _load_classifier_run(workspace, dataset, run, *, load=None):
    """A ``featbench classify`` run: settings.json + one model per AU and fold (threshold inside).

    ``load(path, entry, run)`` reads one model file instead of the classifier registry's
    :func:`classify.registry.load_run_models` (sequence models: :func:`_load_lstm_run`).
    """
    folder = workspace.models_dir(dataset, run)
    settings = read_settings(folder, run)
    feat = (settings.get("features") or {}).get("attrs") or {}
    recorded, file_weights = str(settings.get("weights", "")), str(feat.get("weights", ""))
    if recorded and file_weights and WeightsId.parse(recorded) != WeightsId.parse(file_weights):
        raise WeightsError(f"run {run} records weights {recorded!r} but its feature file "
                           f"{file_weights!r}: the codes it was trained on cannot be reproduced")
    region = settings.get("region", "full")
    aus = list(settings["aus"])
    for fold in settings.get("folds", []):
        for entry in fold.get("aus", {}).values():
            path = folder / entry.get("model_file", "")
            if "model_file" in entry and not path.exists():
                raise StoreError(f"{path}: model file of run {run} is missing (rerun the run)")
    if load is None:
        from classify.registry import load_run_models

        loaded = load_run_models(workspace, dataset, run)  # an AU without a classifier is absent
        folds = [{au: (m, float(m.threshold)) for au, m in loaded[fold["name"]].items()}
                 for fold in settings.get("folds", [])]
    else:
        folds = [{au: (load(folder / e["model_file"], e, run), float(e.get("threshold", 0.0)))
                  for au, e in fold.get("aus", {}).items() if "model_file" in e}
                 for fold in settings.get("folds", [])]
    if not any(folds):
        raise StoreError(f"{folder}: run {run} has no fitted classifier for any AU")
    prep = feat.get("preprocessing")
    prep = json.loads(prep) if isinstance(prep, str) else (prep or {})
    return RunModel(
        run=run, dataset=dataset, clf=settings.get("clf", RunKey.parse(run).clf),
        model=str(feat.get("model") or settings.get("model")), weights=file_weights or recorded,
        aus=aus, au_regions={a: AU_REGION[a] if region == "auto" else region for a in aus},
        folds=folds, alignment=prep.get("aligned_settings", {}),
        info={"protocol": settings.get("protocol"), "created": settings.get("created"),
              "versions": settings.get("versions", {}), "layer": feat.get("layer"),
              "input_size": feat.get("input_size")})


def _load_vote(workspace, dataset, run):
    """A ``featbench ensemble`` run: its members, and their score scales on its frames."""
    path = workspace.predictions_path(dataset, run)
    if not path.exists():
        raise MissingRunError(f"{path}: ensemble {run} has no predictions file (rerun featbench ensemble)")
    pred = read_predictions(path)
    members = pred.get("members", "[]")
    members = json.loads(members) if isinstance(members, str) else list(members)
    if not members:
        raise StoreError(f"{path}: ensemble {run} does not list its members")
    known = _known_runs(workspace, dataset)
    gone = [m for m in members if m not in known or (
        RunKey.parse(m).clf != "vote" and not workspace.models_dir(dataset, m).is_dir())]
    if gone:  # said as the ensemble's, not as an unknown run the user never typed
        raise MissingRunError(f"ensemble {run} votes with {', '.join(gone)}, whose models are no "
                              f"longer in {workspace.results_dir(dataset) / 'models'}: rerun "
                              "that run, or featbench ensemble with the runs there are")
    loaded = [load_run(workspace, dataset, m) for m in members]
    aligned, aus, _ = align_members([read_predictions(workspace.predictions_path(dataset, m))
                                     for m in members], members)
    if aus != list(pred["aus"]):
        raise StoreError(f"{path}: ensemble {run}'s AUs differ from its members' now "
                         "(a member was rerun): rerun featbench ensemble")
    scales = score_scales(np.stack([p["scores"] for p in aligned]))
    return RunModel(run=run, dataset=dataset, clf="vote", model="", weights=str(pred.get("weights", "")),
                    aus=aus, members=loaded, scales=scales,
                    alignment=loaded[0].alignment, info={"protocol": pred.get("protocol")})


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

    The network's own forward (:class:`classify.lstm.SequenceLSTM`, with its state) scores.
    """

    def __init__(self, entry, state, output=0):
        self.entry, self.state, self.output = entry, state, int(output)
        self.window = BIDIRECTIONAL_WINDOW if entry.get("bidirectional") else None
        self._net, self._state = None, {}

    def __getstate__(self):  # the network is rebuilt from its weights after unpickling
        return {"entry": self.entry, "state": self.state, "output": self.output}

    def __setstate__(self, d):
        self.__init__(d["entry"], d["state"], d["output"])

    def _network(self):
        if self._net is None:
            self._net = network_of(self.entry, self.state)
        return self._net

    def reset(self):
        self._state = {}

    def score_tracks(self, X, tracks):
        """Return (n,) logits of the faces ``X`` (n, dims) along ``tracks`` (see RunModel.score)."""
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


def _load_lstm_run(workspace, dataset, run):
    """A ``featbench classify --clf lstm`` run: settings.json + one ``.pt`` per AU (or multilabel)."""
    def load(path, entry, run):
        net, saved = load_file(path)
        return LSTMScorer(saved, net.state_dict(), entry.get("output", 0))

    return _load_classifier_run(workspace, dataset, run, load=load)


def _load_ft_run(workspace, dataset, run):
    from featbench.apply.netmodels import load_ft_run

    return load_ft_run(workspace, dataset, run)


def _load_transfer_run(workspace, dataset, run):
    from featbench.apply.netmodels import load_transfer_run

    return load_transfer_run(workspace, dataset, run)


#: loaders by RunKey.clf: one line per kind of run predict can apply
_LOADERS = {"lda": _load_classifier_run, "svm": _load_classifier_run, "vote": _load_vote,
            "lstm": _load_lstm_run, "ft": _load_ft_run, "transfer": _load_transfer_run}


# --- the self-contained file ----------------------------------------------------------------
def _versions():
    import sklearn

    return {"featbench": __version__, "scikit-learn": sklearn.__version__}


def export_run(model, out, workspace=None):
    """Write ``model`` (a :class:`RunModel`) to the self-contained file ``out``; return its path.

    A fine-tuned network whose codes a classify run (or a member) reads is carried whole: its
    file is found in ``workspace`` (:func:`featbench.apply.predict.finetuned_file`). Written through
    a temporary file and renamed: a crash never leaves half a file.

    Raises
    ------
    WeightsError
        Such a network's file is not in ``workspace``.
    """
    import joblib

    from featbench.apply.predict import finetuned_file
    for m, w in model.networks():
        wid = WeightsId.parse(w)
        if wid.kind == "finetuned" and model.network_for((m, w)) is None and model.weights_blob(w) is None:
            path = finetuned_file(workspace, wid)
            if path is None:
                raise WeightsError(f"run {model.run} reads codes of {m} fine-tuned by {wid.name}, "
                                   "whose weights file is not in this workspace: it cannot be exported")
            model.blobs[w] = path.read_bytes()

    payload = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
               "versions": _versions(), "run": model.to_dict()}
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            joblib.dump(payload, fh, compress=3)
    return out


def load_model_file(path):
    """Read a file written by :func:`export_run` back into a :class:`RunModel`.

    Raises
    ------
    StoreError
        Not a featbench model file, or one of another format or library version (the message
        names the file, its version and this one's).
    """
    import os

    import joblib

    if not os.path.exists(path):
        raise StoreError(f"{path}: model file does not exist")
    try:
        payload = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise StoreError(f"{path}: not a featbench model file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise StoreError(f"{path}: not a featbench model file (make one with featbench export RUN --out FILE)")
    have, want = payload.get("format_version"), MODEL_FORMAT_VERSION
    if have != want:
        raise StoreError(f"{path}: model file format {have}, this featbench reads format {want} "
                         f"(made by featbench {payload.get('versions', {}).get('featbench', '?')}; "
                         "export the run again with this version)")
    theirs, ours = payload.get("versions", {}), _versions()
    for lib in ("featbench", "scikit-learn"):
        a, b = str(theirs.get(lib, "?")), ours[lib]
        if a.split(".")[:2] != b.split(".")[:2]:
            raise StoreError(f"{path}: made with {lib} {a}, this is {lib} {b}: its classifiers "
                             f"may not load the same (install {lib} {a} or export the run again here)")
    try:
        return RunModel.from_dict(payload["run"])
    except (TypeError, KeyError, ValueError, AttributeError) as exc:  # a header without its run
        raise StoreError(f"{path}: damaged featbench model file: its run is incomplete "
                         f"({type(exc).__name__}); export the run again") from None
