"""The streaming pipeline of ``featbench predict``: frames in, scored rows out, in constant memory.

Decoding runs in one background thread (:mod:`featbench.core.footage`), detection and alignment
in :data:`DETECT_THREADS` more (:func:`featbench.apply.faces.detect_frame`; dlib and OpenCV
release the GIL), and the main thread encodes (:mod:`featbench.apply.encoders`) and scores
(the runs' :class:`classify.infer.RunModel`) batches of faces while the next frames are being
decoded and detected. Every queue is bounded, so a long video runs in constant memory; rows are
appended to the CSV batch by batch (:class:`featbench.apply.output.CsvWriter`).

A bidirectional LSTM looks ahead: its batches are windows of ``window`` frames
(:class:`classify.infer.LSTMScorer`). A person-calibrated run (``--calibrate median|neutral``)
calibrates each face track with all of its frames, as its training calibrated each subject's
video: an input (a video, or a folder of images) is scored whole once it ends (encoded batch by
batch as it streams, only the faces' codes held until then, so memory grows with the code size,
not the face images), and a face track seen in one frame only cannot be calibrated: the rule
is per track, so with ``--all-faces`` a passer-by in one frame gets a row with a face and empty
AU columns, the other tracks are scored, and the summary and the sidecar count such tracks
(``uncalibrated_tracks``); an input of such faces only, a photo, is an error.
"""

import numpy as np

from featbench.apply.encoders import DEFAULT_BATCH, encode_batch, encode_faces, join_codes
from featbench.apply.faces import Tracker, detect_frame
from featbench.apply.output import COLUMNS_HEAD, uncalibrated_stats
from featbench.core import footage, interrupt
from featbench.core._background import in_background, ordered_map
from featbench.core.threads import use_torch_threads

#: face-detection threads beside the network (decoded frames are detected two at a time)
DETECT_THREADS = 2


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


def batch_table(items, outputs, encoders, batch_size=DEFAULT_BATCH, codes=None):
    """Score the faces of ``items`` with every run of ``outputs``; return their rows.

    ``codes``: the faces' codes already computed (:func:`encode_batch`), else encoded here.
    """
    import pandas as pd

    if codes is None:
        codes = encode_batch(items, outputs.runs, encoders, batch_size)
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


def stream(sources, outputs, encoders, writer, *, detector, size, all_faces, batch_size, total,
            progress):
    """Decode, detect and align in background threads; encode and classify batch by batch.

    Returns the whole table and the counts (frames, frames with a face, faces).
    """
    import pandas as pd
    from tqdm import tqdm

    def detect(frame):
        return detect_frame(frame, detector=detector, all_faces=all_faces, size=size)

    warnings = []
    frames = in_background(footage.iter_frames(sources, warnings), maxsize=16,
                           name="featbench-decode")
    items = in_background(ordered_map(detect, frames, threads=DETECT_THREADS),
                          maxsize=2 * batch_size, name="featbench-detect")
    # the detection threads keep their cores busy while the networks encode: torch gets the
    # rest (on 2 cores one thread: 1.2x predict's frames/s over torch's default of 2 there)
    use_torch_threads(helpers=1, reserved=DETECT_THREADS)
    tracker = Tracker() if all_faces else None
    tables, stats = [], {"frames": 0, "with_face": 0, "faces": 0}
    bar = tqdm(total=total or None, desc="predict", unit="frame", disable=not progress or None,
               dynamic_ncols=True)
    try:
        windows = [m.window() for m in outputs.runs if m.window()]
        whole = any(m.whole_tracks() for m in outputs.runs)

        def emit(batch, codes=None):
            df = batch_table(batch, outputs, encoders, batch_size, codes=codes)
            stats["frames"] += len(batch)
            stats["with_face"] += sum(1 for it in batch if it.faces)
            stats["faces"] += sum(len(it.faces) for it in batch)
            if writer is not None:
                writer.write(df)
            tables.append(df)

        held, held_codes = [], []  # a calibrated run: the input so far, as codes (faces dropped)

        def flush():
            codes = join_codes(held_codes)
            held_codes.clear()  # the parts go before scoring: one copy of the codes
            emit(held, codes)
            held.clear()

        for batch in interrupt.between(  # Ctrl-C: stops at the next batch
                batches(items, batch_size=batch_size, window=min(windows) if windows else None,
                        tracker=tracker, whole=whole)):
            if not whole:
                emit(batch)
            else:
                if held and batch[0].frame.sequence != held[-1].frame.sequence:
                    flush()
                held_codes.append(encode_batch(batch, outputs.runs, encoders, batch_size))
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
    stats.update(uncalibrated_stats(outputs.runs))  # the per-track rule: said, never a crash
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
