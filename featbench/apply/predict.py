"""``featbench predict``: apply a trained run to a user's own videos and images.

Per frame: decode (:mod:`featbench.core.footage`) -> detect faces and fit 68 landmarks with dlib
(``hog`` or the MMOD ``cnn`` detector) -> the alignment and region crops every run was trained
on (:func:`featbench.core.faces.align_face`, :func:`featbench.core.align.region_crops`) -> the run's
network with the run's weights -> its scalers, classifiers and thresholds
(:class:`classify.scorer.RunModel`, loaded by :mod:`featbench.apply.runmodel`).

A fine-tuned (``ft``) or transfer run carries its trained network, which stands where the
encoder stands and whose outputs are the scores (:mod:`classify.netscorer`).

Streaming: decoding runs in one background thread, detection in two more (dlib and OpenCV
release the GIL), and the main thread encodes and classifies batches of faces while the next
frames are being decoded and detected. Every queue is bounded, so a long video runs in constant
memory; rows are appended to the CSV batch by batch. A bidirectional LSTM looks ahead: its
batches are windows of ``window`` frames (:class:`classify.lstm.LSTMScorer`).

Output (DESIGN.md contract), one row per frame and face, OpenFace's column names::

    frame, face_id, timestamp, confidence, success, AU01_c ... AU26_c, AU01_p ... AU26_p,
    [AU01_r ... AU26_r,] input

Intensity: an intensity run (``featbench classify --task intensity``, or a learned method's
``--task intensity``) as ``--run`` writes ``AUxx_c`` (its predicted intensity rounded >= 2,
``AUxx_r > 1.5``) and ``AUxx_r`` (the predicted intensity, 0-5); ``--run OCC --intensity-run
INT`` writes ``AUxx_c`` / ``AUxx_p`` from OCC and ``AUxx_r`` from INT. The rule when they
disagree (:data:`DISAGREEMENT_RULE`): each column is its own run's answer, never forced to
agree; the sidecar counts the disagreeing faces per AU. A person-calibrated run (``--calibrate
median|neutral``) calibrates each face track with all of its frames, as its training calibrated
each subject's video: an input (a video, or a folder of images) is scored whole once it ends
(encoded batch by batch as it streams, only the faces' codes held until then, so memory grows
with the code size, not the face images), and a face seen in one frame only cannot be
calibrated (its row's AU columns stay empty; an input of such faces only, a photo, is an error).

``frame`` is 1-based within its input, ``timestamp`` in seconds, ``confidence`` the face
detector's score (0 without a face), ``success`` 1 when a face was found and classified.
``AUxx_c`` is the run's 0/1 decision, ``AUxx_p`` its score (the classifier's decision function;
the decision is ``score > threshold``, thresholds in the sidecar). A frame without a face is a
row with ``success = 0`` and empty AU columns; it is never dropped. The sidecar JSON beside the
CSV names the run, its network(s) and weights (random weights flagged as such), the
thresholds, the detector and the featbench version.

Faces: the largest face of each frame (``face_id`` 0), or with ``all_faces`` every face, each
with a ``face_id`` that follows it from frame to frame (boxes matched by overlap).
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench import __version__
from featbench.apply.runmodel import RunModel, finetuned_file, load_model_file, load_run
from featbench.core import faces as F, footage
from featbench.core._background import in_background, ordered_map
from featbench.core.datasets import training_data
from featbench.core.errors import UsageError, WeightsError
from featbench.core.identity import WeightsId
from featbench.core.threads import use_torch_threads
from featbench.core.workspace import (Workspace, atomic_write_text, check_outputs, output_lock,
                                      save_figure, temp_sibling, writing)

from extract.encoders import create_encoder
from extract.registry import get_spec
from extract.weights import WeightsChoice, file_sha256, pretrained_path

#: faces encoded and classified together
DEFAULT_BATCH = 32
#: face-detection threads beside the network (decoded frames are detected two at a time)
DETECT_THREADS = 2
#: a face keeps its face_id when its box overlaps the previous frame's by at least this IoU
TRACK_IOU = 0.3
COLUMNS_HEAD = ("frame", "face_id", "timestamp", "confidence", "success")


# --- the network(s) a run reads ------------------------------------------------------------------
def open_encoder(model, weights, *, run, device="auto", weights_file=None, input_size=None):
    """Build the encoder that reproduces the codes ``run`` was trained on.

    Parameters
    ----------
    model : str
        The network's registry name.
    weights : str
        The identity stored with the run's codes (``WeightsId`` string form).
    run : str
        The run's name (for messages).
    device : str
    weights_file : str, optional
        The state dict, for a run whose codes came from a user's weights file (identity
        ``file sha256:...``) or a fine-tuned network's (``finetuned:<run> sha256:...``): it is
        checked against that hash.
    input_size : int, optional
        The face side the codes were extracted at (``featbench extract --input-size``).

    Raises
    ------
    WeightsError
        The weights cannot be found or are not the ones the run's codes came from; the message
        names the run and the weights.
    """
    wid = WeightsId.parse(weights)
    what = f"run {run} was trained on codes of {model} with weights {str(wid)!r}"
    choice = _weights_choice(wid, get_spec(model), what, weights_file)
    try:
        encoder = create_encoder(model, weights=choice, device=device, input_size=input_size)
    except WeightsError as exc:
        raise WeightsError(f"{what}, which cannot be loaded here: {exc}") from None
    got = WeightsId.parse(encoder.weights_id)
    if ":" not in wid.name:  # stored before identities carried the tag (imagenet): the same file
        got = WeightsId(got.kind, got.name.partition(":")[0], got.seed, got.sha256)
    if wid.kind == "finetuned" and got.kind in ("file", "finetuned"):
        same = got.sha256 == wid.sha256 or not wid.sha256  # the same file, wherever it lies
    else:
        same = (got.kind, got.name, got.seed) == (wid.kind, wid.name, wid.seed)
    if not same:
        raise WeightsError(f"{what}, but here they load as {str(got)!r}")
    return encoder


def _weights_choice(wid, spec, what, weights_file):
    """The :class:`~extract.weights.WeightsChoice` that loads ``wid`` here (checked against its sha256)."""
    if wid.kind == "none":
        return WeightsChoice("none")
    if wid.kind == "random":
        return WeightsChoice("random", seed=int(wid.seed))
    if wid.kind == "pretrained":
        tag = wid.name.partition(":")[2]  # imagenet:IMAGENET1K_V2 -> the IMAGENET1K_V2 tag
        path, cached = pretrained_path(spec, tag or None)
        if wid.sha256 and cached and file_sha256(path) != wid.sha256:
            raise WeightsError(f"{what}, but {path} has another sha256: they cannot be reproduced here")
        return WeightsChoice("pretrained", tag=tag or "imagenet")
    if weights_file is None:  # file / finetuned
        where = (f" (featbench finetune / transfer run {wid.name} is not in this workspace)"
                 if wid.kind == "finetuned" else "")
        raise WeightsError(f"{what}, a file that is not given here{where}: pass the same file "
                           "with --weights PATH")
    if wid.sha256 and file_sha256(weights_file) != wid.sha256:
        raise WeightsError(f"{what}, but {weights_file} is another file (sha256 differs)")
    return WeightsChoice("file", path=Path(weights_file))


# --- faces in frames -----------------------------------------------------------------------------
@dataclass
class _Face:
    box: tuple
    confidence: float
    image: object  # aligned (S, S, 3) uint8
    boxes: object  # (3, 4) region boxes
    face_id: int = 0


@dataclass
class _Item:
    frame: object  # footage.Frame, image dropped once detected
    faces: list = field(default_factory=list)


def _detect(frame, *, detector, all_faces, size):
    """Faces of one frame, aligned as ``featbench align`` aligns them (runs in a worker thread)."""
    found = []
    if frame.image is not None:
        for box, conf, lm in F.detect_faces(frame.image, detector=detector, all_faces=all_faces):
            try:
                face, M = F.align_face(frame.image, lm, size=size)
                boxes = F.region_boxes(F.transform_points(lm, M), image_size=size)
            except ValueError:  # degenerate landmarks: not a usable face
                continue
            found.append(_Face(box, conf, face, boxes))
    frame.image = None  # the frame is not needed any more: keep memory flat
    return _Item(frame, found)


def _iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class _Tracker:
    """Give each face a face_id that follows it: greedy matching of boxes by overlap."""

    def __init__(self):
        self.sequence, self.prev, self.next_id = None, [], 0

    def assign(self, item):
        if item.frame.sequence != self.sequence:  # another input: start over
            self.sequence, self.prev, self.next_id = item.frame.sequence, [], 0
        pairs = sorted(((_iou(f.box, box), i, fid) for i, f in enumerate(item.faces)
                        for fid, box in self.prev), reverse=True)
        taken_f, taken_id = set(), set()
        for iou, i, fid in pairs:
            if iou < TRACK_IOU or i in taken_f or fid in taken_id:
                continue
            item.faces[i].face_id = fid
            taken_f.add(i)
            taken_id.add(fid)
        for i, f in enumerate(item.faces):
            if i not in taken_f:
                f.face_id, self.next_id = self.next_id, self.next_id + 1
        self.prev = [(f.face_id, f.box) for f in item.faces]


# --- the run -------------------------------------------------------------------------------------
@dataclass
class Outputs:
    """Which run fills which of OpenFace's columns (see the module docstring).

    ``occurrence`` fills ``AUxx_c`` and ``AUxx_p``; ``intensity`` fills ``AUxx_r`` (and, when it
    is the only run, ``AUxx_c``: its rounded intensity >= 2).
    """

    occurrence: object = None
    intensity: object = None

    @property
    def runs(self):
        return [m for m in (self.occurrence, self.intensity) if m is not None]

    @property
    def c_run(self):
        return self.occurrence or self.intensity

    def columns(self):
        c = self.c_run.aus
        p = self.occurrence.aus if self.occurrence is not None else []
        r = self.intensity.aus if self.intensity is not None else []
        return (list(COLUMNS_HEAD) + [f"{a}_c" for a in c] + [f"{a}_p" for a in p]
                + [f"{a}_r" for a in r] + ["input"])


def outputs_of(model, intensity=None):
    """Return the :class:`Outputs` of ``--run`` (``model``) and ``--intensity-run``.

    Raises
    ------
    UsageError
        An intensity run as ``--run`` beside ``--intensity-run``, or an occurrence run as
        ``--intensity-run``.
    """
    if intensity is None:
        return Outputs(intensity=model) if model.task == "intensity" else Outputs(occurrence=model)
    if model.task == "intensity":
        raise UsageError(f"--run {model.run} is an intensity run: give the occurrence run as --run "
                         f"and the intensity run as --intensity-run")
    if intensity.task != "intensity":
        raise UsageError(f"--intensity-run {intensity.run} is an occurrence run (train one with "
                         "featbench classify --task intensity)")
    return Outputs(occurrence=model, intensity=intensity)


def open_encoders(model, *, device="auto", weights_file=None, workspace=None):
    """Return ``{(network, weights): encoder}`` of every network ``model`` reads.

    A fine-tuned or transfer run carries its trained network (:mod:`classify.netscorer`);
    a classify run's network is built from its name and weights identity (:func:`open_encoder`),
    a fine-tuned network's file found in ``workspace`` or carried by an exported model.
    """
    import tempfile

    out = {}
    for key in model.networks():
        own = model.network_for(key)
        if own is not None:
            out[key] = own.open(device)
            continue
        carried = model.weights_blob(key[1])
        kw = dict(run=model.run, device=device, input_size=model.input_size_for(key))
        if carried is None:
            found = finetuned_file(workspace, WeightsId.parse(key[1]))
            out[key] = open_encoder(*key, weights_file=found or weights_file, **kw)
            continue
        with tempfile.TemporaryDirectory(prefix="featbench-weights-") as tmp:
            name, blob = carried
            path = Path(tmp) / Path(name).name  # its suffix says how it is read (.safetensors)
            path.write_bytes(blob)
            out[key] = open_encoder(*key, weights_file=path, **kw)
    return out


def score_faces(model, encoders, images, boxes, tracks=None, *, batch_size=DEFAULT_BATCH):
    """Return ``(scores, decisions)`` of aligned faces: crops, the run's network(s), its classifiers.

    Parameters
    ----------
    model : RunModel
    encoders : dict
        :func:`open_encoders`'s.
    images : ndarray (n, S, S, 3) uint8
        Aligned faces (``featbench align``'s).
    boxes : ndarray (n, 3, 4)
        Their region boxes.
    tracks : list, optional
        Per face, ``(track key, frame number)`` (sequence models).
    batch_size : int
        Faces encoded at once (a bidirectional LSTM's window is scored whole, encoded in parts).
    """
    codes = encode_faces(model, encoders, images, boxes, batch_size=batch_size)
    scores, decisions, _ = model.score(codes, tracks=tracks)
    return scores, decisions


def encode_faces(model, encoders, images, boxes, *, batch_size=DEFAULT_BATCH, have=None):
    """Return ``{(network, weights, region): codes}`` of aligned faces, as the run's codes were made.

    Each encoder gets the crops its run was trained on, by the one rule of the face source
    (:meth:`featbench.core.facesource.FaceInput.crops` of the encoder's ``face_input``).
    ``have``: codes computed already (another run's), kept and not computed again.
    """
    codes = dict(have or {})
    for (net, weights), regions in model.networks().items():
        enc = encoders[(net, weights)]
        for region in sorted(r for r in regions if (net, weights, r) not in codes):
            face_input = enc.face_input(region)
            parts = [np.asarray(enc(face_input.crops(images[a:a + batch_size], boxes[a:a + batch_size])),
                                dtype=np.float32) for a in range(0, len(images), batch_size)]
            codes[(net, weights, region)] = np.concatenate(parts)
    return codes


def _encode_batch(items, outputs, encoders, batch_size=DEFAULT_BATCH):
    """The codes of the faces of ``items`` for every run of ``outputs`` (a network two runs read
    is encoded once): ``{(network, weights, region): codes}``, empty without faces."""
    faces = [f for it in items for f in it.faces]
    codes = {}
    if faces:
        images, boxes = np.stack([f.image for f in faces]), np.stack([f.boxes for f in faces])
        for m in outputs.runs:
            codes = encode_faces(m, encoders, images, boxes, batch_size=batch_size, have=codes)
    return codes


def _join_codes(parts):
    """Codes of consecutive batches as one: ``{key: concatenated codes}`` (faceless ones skipped)."""
    parts = [c for c in parts if c]
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]} if parts else {}


def _batch_table(items, outputs, encoders, batch_size=DEFAULT_BATCH, codes=None):
    """Score the faces of ``items`` with every run of ``outputs``; return their rows.

    ``codes``: the faces' codes already computed (:func:`_encode_batch`), else encoded here.
    """
    import pandas as pd

    if codes is None:
        codes = _encode_batch(items, outputs, encoders, batch_size)
    scored = {}
    if codes:
        tracks = [((it.frame.sequence, f.face_id), it.frame.frame) for it in items for f in it.faces]
        for m in outputs.runs:
            scored[id(m)] = m.score(codes, tracks=tracks)[:2]
    cols = outputs.columns()
    c_run, p_run, r_run = outputs.c_run, outputs.occurrence, outputs.intensity
    rows, j = [], 0
    for it in items:
        fr = it.frame
        if not it.faces:
            rows.append((fr.frame, 0, fr.timestamp, 0.0, 0) + (None,) * (len(cols) - 6) + (fr.source,))
            continue
        for f in it.faces:
            s_c, d_c = scored[id(c_run)]
            row = [fr.frame, f.face_id, fr.timestamp, f.confidence, 1]
            row += [None if np.isnan(v) else int(d) for v, d in zip(s_c[j], d_c[j])]
            if p_run is not None:
                row += [None if np.isnan(v) else float(v) for v in scored[id(p_run)][0][j]]
            if r_run is not None:
                row += [None if np.isnan(v) else float(v) for v in scored[id(r_run)][0][j]]
            rows.append(tuple(row) + (fr.source,))
            j += 1
    df = pd.DataFrame(rows, columns=cols)
    for c in cols[len(COLUMNS_HEAD):-1]:
        df[c] = df[c].astype("Int8" if c.endswith("_c") else "float64")
    return df


def load_model(*, run=None, model_file=None, workspace=".", dataset="synth"):
    """Return the :class:`~classify.scorer.RunModel` of ``run`` (or ``best``) or of ``model_file``."""
    if (run is None) == (model_file is None):
        raise UsageError("give either --run RUN (or best) or --model FILE")
    if model_file is not None:
        return load_model_file(model_file)
    return load_run(workspace, dataset, run)


def predict(inputs, *, run=None, model_file=None, workspace=".", dataset="synth", out=None,
            plot=None, detector="hog", all_faces=False, device="auto", batch_size=DEFAULT_BATCH,
            weights_file=None, window=None, progress=True, force=False, intensity_run=None):
    """Apply a trained run to videos and images; return the per-frame table.

    Parameters
    ----------
    inputs : str, path or list of them
        Videos, images, folders of images, globs (:func:`featbench.core.footage.list_sources`).
    run : str, optional
        A run of ``workspace`` (``alexnet__full__svm``...) or ``best`` (highest mean F1 of
        summary.csv).
    model_file : str, optional
        A file written by ``featbench export`` (instead of ``run``); anything else (a pickle,
        a torch checkpoint) is refused unopened.
    workspace : str or Workspace
    dataset : str
        The data set the run was trained on.
    out : str or path, optional
        The CSV to write (and ``<out>.json`` beside it). None: nothing is written.
    plot : str or path, optional
        A PNG timeline of the AU decisions and scores.
    detector : {"hog", "cnn"}
    all_faces : bool
        Every face of a frame, tracked (default: the largest only).
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Faces encoded at once.
    weights_file : str, optional
        The weights file of a run trained on a user's state dict.
    window : int, optional
        Frames a bidirectional LSTM sees at once (default
        :data:`classify.lstm.BIDIRECTIONAL_WINDOW`); other runs stream and ignore it.
    progress : bool
        A progress bar in frames on stderr.
    force : bool
        Replace an existing ``out`` / ``plot`` / sidecar that featbench did not write (an
        input is never replaced: :func:`featbench.core.workspace.check_outputs`).
    intensity_run : str, optional
        An intensity run of ``workspace`` whose predicted intensities fill ``AUxx_r`` beside
        ``run``'s occurrence columns (see the module docstring for when they disagree).

    Returns
    -------
    pandas.DataFrame
        The rows of the CSV (columns in the module docstring); ``df.attrs`` holds the run, the
        weights, the sidecar's content and the one-line ``summary``.
    """
    t0 = time.perf_counter()
    sources = footage.list_sources(inputs)
    check_outputs({"--out": out, "the sidecar": sidecar_path(out) if out is not None else None,
                   "--plot": plot}, inputs=[p for src in sources for p in src.paths],
                  force=force, command="predict")
    with output_lock([out, plot]):
        outputs, size = _load_outputs(run, model_file, intensity_run, workspace=workspace,
                                      dataset=dataset, detector=detector, batch_size=batch_size,
                                      window=window)
        model = outputs.c_run  # --run's (or --model's)
        encoders = _open_all(outputs, device, weights_file, None if model_file else workspace)
        total = footage.count_frames(sources)  # also opens every video: a bad one fails first
        writer = _CsvWriter(out, outputs.columns()) if out is not None else None
        try:
            table, stats = _stream(sources, outputs, encoders, writer, detector=detector,
                                   size=size, all_faces=all_faces, batch_size=int(batch_size),
                                   total=total, progress=progress)
            seconds = time.perf_counter() - t0
            sidecar = {**_sidecar(model, sources, detector, all_faces, stats, seconds, model_file,
                                  __version__), **_intensity_sidecar(outputs, table)}
            if writer is not None:
                writer.close(sidecar_path(out), json.dumps(sidecar, indent=2, default=str) + "\n")
            if plot is not None:
                plot_timeline(table, model.aus, plot,
                              title="; ".join(map(RunModel.describe, outputs.runs)))
        finally:
            if writer is not None:
                writer.abort()
    table.attrs.update({"run": model.run, "sidecar": sidecar, "warning": synthetic_warning(model),
                        "summary": _summary(stats, sources, seconds, outputs, out, plot)})
    return table


def _open_all(outputs, device, weights_file, workspace):
    """The encoders of every network the runs of ``outputs`` read (one per network)."""
    return {k: e for m in outputs.runs for k, e in open_encoders(
        m, device=device, weights_file=weights_file,
        workspace=None if workspace is None else _workspace(workspace)).items()}


def _load_outputs(run, model_file, intensity_run, **kw):
    """Load ``--run`` (or ``--model``) and ``--intensity-run``: their :class:`Outputs` and the
    side faces are aligned at."""
    model, size = _prepare(run=run, model_file=model_file, **kw)
    other = (None if intensity_run is None else
             _prepare(run=intensity_run, model_file=None, size=size, **kw)[0])
    return outputs_of(model, other), size


def _summary(stats, sources, seconds, outputs, out, plot):
    """The one line ``featbench predict`` prints at the end."""
    return (f"{stats['frames']} frames ({stats['with_face']} with a face, {stats['faces']} faces) "
            f"of {len(sources)} input(s) in {seconds:.1f} s ({stats['frames'] / max(seconds, 1e-9):.1f} "
            f"frames/s) with {'; '.join(m.describe() for m in outputs.runs)}"
            + (f" -> {out}" if out is not None else "") + (f", {plot}" if plot is not None else ""))


def trained_on(model):
    """The training data set of a loaded run: ``{"dataset", "synthetic", "kind"}``.

    Recorded when the run was loaded from its workspace (and so carried by an export); an
    older export without it is judged by the data set's name.
    """
    data = dict(model.info.get("training_data") or training_data(model.dataset))
    return {**data, "kind": "synthetic" if data.get("synthetic") else "real"}


def synthetic_warning(model):
    """The one line ``featbench predict`` prints for a run trained on synthetic faces, else ""."""
    data = trained_on(model)
    if not data.get("synthetic"):
        return ""
    return (f"note: {model.run} was trained on {data['dataset']}, synthetic faces: it checks the "
            "pipeline, it is not a detector for real footage (train on labelled real faces, "
            "e.g. featbench run --dataset disfa --root DIR, and predict with that run)")


def _workspace(workspace):
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def _prepare(*, run, model_file, workspace, dataset, detector, batch_size, window, size=None):
    """Check the settings, load the run; return it and the side faces are aligned at (``size``:
    the first run's, which a second run must share)."""
    if detector not in F.DETECTORS:
        raise UsageError(f"unknown face detector {detector!r} (choices: {', '.join(F.DETECTORS)})")
    if int(batch_size) < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    if window is not None and int(window) < 1:
        raise UsageError(f"--window must be at least 1 frame (got {window})")
    model = load_model(run=run, model_file=model_file, workspace=workspace, dataset=dataset)
    model.reset()  # a sequence model starts every call afresh
    if window is not None:
        model.set_window(window)
    own = int(model.alignment.get("size") or F.CANONICAL_SIZE)
    if size is not None and own != size:
        raise UsageError(f"run {model.run} reads faces aligned at {own} px, the other run at "
                         f"{size} px: give runs trained on one aligned-face cache")
    _check_alignment(model, own)
    return model, own


def _stream(sources, outputs, encoders, writer, *, detector, size, all_faces, batch_size, total,
            progress):
    """Decode, detect and align in background threads; encode and classify batch by batch.

    Returns the whole table and the counts (frames, frames with a face, faces).
    """
    import pandas as pd
    from tqdm import tqdm

    def detect(frame):
        return _detect(frame, detector=detector, all_faces=all_faces, size=size)

    warnings = []
    frames = in_background(footage.iter_frames(sources, warnings), maxsize=16,
                           name="featbench-decode")
    items = in_background(ordered_map(detect, frames, threads=DETECT_THREADS),
                          maxsize=2 * batch_size, name="featbench-detect")
    # the detection threads keep their cores busy while the networks encode: torch gets the
    # rest (on 2 cores one thread: 1.2x predict's frames/s over torch's default of 2 there)
    use_torch_threads(helpers=1, reserved=DETECT_THREADS)
    tracker = _Tracker() if all_faces else None
    tables, stats = [], {"frames": 0, "with_face": 0, "faces": 0}
    bar = tqdm(total=total or None, desc="predict", unit="frame", disable=not progress or None,
               dynamic_ncols=True)
    try:
        windows = [m.window() for m in outputs.runs if m.window()]
        whole = any(m.whole_tracks() for m in outputs.runs)

        def emit(batch, codes=None):
            df = _batch_table(batch, outputs, encoders, batch_size, codes=codes)
            stats["frames"] += len(batch)
            stats["with_face"] += sum(1 for it in batch if it.faces)
            stats["faces"] += sum(len(it.faces) for it in batch)
            if writer is not None:
                writer.write(df)
            tables.append(df)

        held, held_codes = [], []  # a calibrated run: the input so far, as codes (faces dropped)

        def flush():
            codes = _join_codes(held_codes)
            held_codes.clear()  # the parts go before scoring: one copy of the codes
            emit(held, codes)
            held.clear()

        for batch in batches(items, batch_size=batch_size, window=min(windows) if windows else None,
                             tracker=tracker, whole=whole):
            if not whole:
                emit(batch)
            else:
                if held and batch[0].frame.sequence != held[-1].frame.sequence:
                    flush()
                held_codes.append(_encode_batch(batch, outputs, encoders, batch_size))
                for f in (f for it in batch for f in it.faces):
                    f.image = None
                held += batch
            bar.update(len(batch))
        if held:
            flush()
    finally:
        bar.close()
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=outputs.columns())
    if warnings:
        stats["warnings"] = warnings
    return table, stats


def batches(items, *, batch_size, window=None, tracker=None, whole=False):
    """Group detected frames into the batches that are encoded and classified together.

    A batch closes once it holds ``batch_size`` faces, or, with ``window`` (a bidirectional
    sequence model), once it holds ``window`` frames; the last one at the end of the frames.
    With ``whole`` (a person-calibrated run: each face track is calibrated with all of its
    frames), a batch never spans two inputs and ``window`` is ignored: the caller encodes each
    batch and keeps its codes until the input ends.
    ``tracker`` (``--all-faces``) gives each face its ``face_id`` first.
    """
    batch, n_faces = [], 0
    for item in items:
        if tracker is not None:
            tracker.assign(item)
        if whole and batch and item.frame.sequence != batch[-1].frame.sequence:
            yield batch
            batch, n_faces = [], 0
        batch.append(item)
        n_faces += len(item.faces)
        if (len(batch) >= window) if (window and not whole) else (n_faces >= batch_size):
            yield batch
            batch, n_faces = [], 0
    if batch:
        yield batch


def _check_alignment(model, size):
    al = model.alignment or {}
    tv = al.get("template_version")
    if tv is not None and int(tv) != F.TEMPLATE_VERSION:
        raise UsageError(f"run {model.run} was trained on faces aligned with template version {tv}; "
                         f"this featbench aligns with version {F.TEMPLATE_VERSION}: retrain the run")
    if size < 16:
        raise UsageError(f"run {model.run}: aligned face size {size} is not usable")


def sidecar_path(out):
    """The JSON beside a predictions CSV: ``clip.csv`` -> ``clip.json``."""
    out = Path(out)
    return out.with_suffix(".json") if out.suffix.lower() == ".csv" else out.with_name(out.name + ".json")


def _sidecar(model, sources, detector, all_faces, stats, seconds, model_file, version):
    thresholds = None
    if not model.members and len(model.folds) == 1:
        thresholds = {a: model.folds[0][a][1] for a in model.aus if a in model.folds[0]}
    nets = [{"model": m, "weights": w, "weights_described": model.weights_text((m, w)),
             "random_init": model.random_init((m, w)), "regions": sorted(r),
             "start_weights": getattr(model.network_for((m, w)), "start_weights", None)}
            for (m, w), r in model.networks().items()]
    return {
        "run": model.run, "dataset": model.dataset, "training_data": trained_on(model),
        "clf": model.clf, "networks": nets,
        "members": [m.run for m in model.members], "aus": model.aus,
        "thresholds": thresholds, "decision": "AUxx_c = AUxx_p > threshold"
        if thresholds is not None else "AUxx_c: majority vote of the members' decisions",
        "model_file": str(model_file) if model_file else None,
        "detector": detector, "all_faces": bool(all_faces),
        "alignment": model.alignment, "inputs": [str(s) for s in sources], **stats,
        "seconds": round(seconds, 2), "featbench_version": version,
        "note": "the run's faces were aligned from "
                f"{model.alignment.get('landmarks', 'unknown')} landmarks; here from dlib's 68-point fit",
    }


#: how ``AUxx_c`` and ``AUxx_r`` relate when they come from two runs (the sidecar says it too)
DISAGREEMENT_RULE = (
    "AUxx_c and AUxx_p come from the occurrence run (--run), AUxx_r from the intensity run "
    "(--intensity-run), each exactly as its run decides; they are never forced to agree. Where "
    "they disagree (AUxx_c = 1 with AUxx_r < 1.5, or AUxx_c = 0 with AUxx_r > 1.5: rounded "
    "intensity >= 2 is the occurrence labels' definition), each column keeps its own run's "
    "answer and 'disagreements' counts those faces per AU: gate one by the other if your "
    "analysis needs them consistent.")


def _intensity_sidecar(outputs, table):
    """The sidecar's entries about ``AUxx_r``: the intensity run, its rule, the disagreements."""
    r = outputs.intensity
    if r is None:
        return {}
    out = {"intensity_run": r.run, "intensity_calibration": r.calibrate,
           "intensity_columns": "AUxx_r: predicted intensity 0-5 (clipped)"}
    if outputs.occurrence is None:
        out["decision"] = "AUxx_c = AUxx_r > 1.5 (the predicted intensity rounds to >= 2)"
        return out
    out["rule"] = DISAGREEMENT_RULE
    out["disagreements"] = {}
    for au in (a for a in outputs.occurrence.aus if a in r.aus):
        c = table[f"{au}_c"].to_numpy(dtype=float, na_value=np.nan)
        v = table[f"{au}_r"].to_numpy(dtype=float, na_value=np.nan)
        both = np.isfinite(c) & np.isfinite(v)
        out["disagreements"][au] = int(np.sum(both & ((c == 1) != (v > 1.5))))
    return out


class _CsvWriter:
    """Append batches of rows to a temporary file beside ``<out>``; rename it at the end.

    The temporary name is unique (:func:`featbench.core.workspace.temp_sibling`) and removed on
    every way out (:meth:`abort` after :meth:`close` does nothing).
    """

    def __init__(self, out, columns):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_sibling(self.out)
        self.fh = open(self.tmp, "w", newline="")
        self.fh.write(",".join(columns) + "\n")

    def write(self, df):
        with writing(self.out, "writing the predictions"):
            df.to_csv(self.fh, header=False, index=False, float_format="%.6g",
                      lineterminator="\n")

    def close(self, sidecar, text):
        """Finish the CSV, write the sidecar ``text``, then put the CSV in place."""
        import os

        with writing(self.out, "writing the predictions"):
            self.fh.close()
        with writing(sidecar, "writing the sidecar"):
            atomic_write_text(sidecar, text)
        os.replace(self.tmp, self.out)

    def abort(self):
        import contextlib

        with contextlib.suppress(OSError):  # a full disk fails the flush again: nothing to keep
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


# --- the timeline --------------------------------------------------------------------------------
def plot_timeline(table, aus, out, *, title=""):
    """Draw the AU scores and decisions over time as a PNG (one strip per AU).

    The face with the most rows is shown (with ``--all-faces``, the main face); frames without a
    face are grey bands. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = table
    if len(t) and (t["success"] == 1).any():
        main = t.loc[t["success"] == 1, "face_id"].value_counts().idxmax()
        t = t[(t["success"] == 0) | (t["face_id"] == main)].drop_duplicates(["input", "frame"])
    x = np.arange(len(t))
    fig = Figure(figsize=(11, 0.55 * max(len(aus), 1) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    nofaces = (t["success"] == 0).to_numpy() if len(t) else np.zeros(0, bool)
    for i, au in enumerate(aus):
        base = len(aus) - 1 - i
        score = f"{au}_p" if f"{au}_p" in t else f"{au}_r"  # an intensity run alone: its intensity
        p = t[score].to_numpy(dtype=float) if len(t) else np.zeros(0)
        c = t[f"{au}_c"].to_numpy(dtype=float, na_value=np.nan) if len(t) else np.zeros(0)
        finite = p[np.isfinite(p)]
        span = np.abs(finite).max() if finite.size and np.abs(finite).max() > 0 else 1.0
        ax.fill_between(x, base, base + 0.8 * np.nan_to_num(c), step="mid", color="tab:orange",
                        alpha=0.45, linewidth=0)
        ax.plot(x, base + 0.4 + 0.4 * p / span, color="tab:blue", linewidth=0.8)
    for j in np.flatnonzero(nofaces):
        ax.axvspan(j - 0.5, j + 0.5, color="0.85", zorder=0)
    ax.set_yticks([len(aus) - 1 - i + 0.4 for i in range(len(aus))])
    ax.set_yticklabels(aus)
    ax.set_xlim(-0.5, max(len(t), 1) - 0.5)
    ax.set_ylim(-0.2, len(aus))
    ax.set_xlabel("frame (in order of the inputs)" if t["input"].nunique() > 1 else "frame")
    import textwrap

    title = "\n".join(textwrap.wrap(str(title), 150))  # a vote of several networks is long
    ax.set_title(f"{title}\norange: AU present (decision); blue: score; grey: no face", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=90)
    return out
