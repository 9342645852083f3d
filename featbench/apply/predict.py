"""``featbench predict``: apply a trained run to a user's own videos and images.

Per frame: decode (:mod:`featbench.core.footage`) -> detect faces, fit 68 landmarks, align and
cut the region crops every run was trained on, track faces (:mod:`featbench.apply.faces`) ->
the run's network with the run's weights (:mod:`featbench.apply.encoders`) -> its scalers,
classifiers and thresholds (:class:`classify.infer.RunModel`, loaded by
:mod:`featbench.apply.runmodel`) -> one CSV row per frame and face, a sidecar JSON and an
optional timeline plot (:mod:`featbench.apply.output`, which states the columns). The stages
overlap in threads, batch by batch (:mod:`featbench.apply.pipeline`).

This module is the entry point: it checks the settings, loads ``--run`` / ``--model`` (and
``--intensity-run``), opens their networks and runs the pipeline into the output files.
"""

import json
import time

from featbench import __version__
from featbench.apply.encoders import DEFAULT_BATCH, open_all
from featbench.apply.faces import check_alignment
from featbench.apply.output import (CsvWriter, intensity_sidecar, outputs_of, plot_timeline,
                                    sidecar_of, sidecar_path, summary_line, synthetic_warning)
from featbench.apply.pipeline import stream
from featbench.apply.runmodel import load_model_file, load_run
from featbench.core import faces as F, footage
from featbench.core.errors import UsageError
from featbench.core.workspace import (check_outputs, featbench_data_file, made_by_featbench,
                                      output_lock)

def load_model(*, run=None, model_file=None, workspace=".", dataset="synth"):
    """Return the :class:`~classify.infer.RunModel` of ``run`` (or ``best``) or of ``model_file``."""
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
        :data:`classify.infer.BIDIRECTIONAL_WINDOW`); other runs stream and ignore it.
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
    _check_outputs(out, plot, sources, (model_file, weights_file), force)
    with output_lock([out, plot]):
        outputs, size = _load_outputs(run, model_file, intensity_run, workspace=workspace,
                                      dataset=dataset, detector=detector, batch_size=batch_size,
                                      window=window)
        model = outputs.c_run  # --run's (or --model's)
        encoders = open_all(outputs.runs, device, weights_file, None if model_file else workspace)
        total = footage.count_frames(sources)  # also opens every video: a bad one fails first
        writer = CsvWriter(out, outputs.columns()) if out is not None else None
        try:
            table, stats = stream(sources, outputs, encoders, writer, detector=detector,
                                   size=size, all_faces=all_faces, batch_size=int(batch_size),
                                   total=total, progress=progress)
            seconds = time.perf_counter() - t0
            sidecar = {**sidecar_of(model, sources, detector, all_faces, stats, seconds, model_file,
                                  __version__), **intensity_sidecar(outputs, table)}
            if writer is not None:
                writer.close(sidecar_path(out), json.dumps(sidecar, indent=2, default=str) + "\n")
            if plot is not None:
                plot_timeline(table, model.aus, plot,
                              title="; ".join(m.describe() for m in outputs.runs))
        finally:
            if writer is not None:
                writer.abort()
    table.attrs.update({"run": str(model.run), "sidecar": sidecar, "warning": synthetic_warning(model),
                        "summary": summary_line(stats, sources, seconds, outputs, out, plot)})
    return table


def _load_outputs(run, model_file, intensity_run, **kw):
    """Load ``--run`` (or ``--model``) and ``--intensity-run``: their :class:`Outputs` and the
    side faces are aligned at."""
    model, size = _prepare(run=run, model_file=model_file, **kw)
    other = (None if intensity_run is None else
             _prepare(run=intensity_run, model_file=None, size=size, **kw)[0])
    return outputs_of(model, other), size


def _prepare(*, run, model_file, workspace, dataset, detector, batch_size, window, size=None):
    """Check the settings, load the run; return it and the side faces are aligned at (``size``:
    the first run's, which a second run must share)."""
    if detector not in F.DETECTORS:
        raise UsageError(f"unknown face detector {detector!r} (choices: {', '.join(F.DETECTORS.names())})")
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
    check_alignment(model, own)
    return model, own


def _check_outputs(out, plot, sources, files, force):
    """Refuse outputs that would replace an input (the footage, the model or weights ``files``
    read) or a file that is not a predict output (one line, exit 2, nothing written)."""
    check_outputs({"--out": out, "the sidecar": sidecar_path(out) if out is not None else None,
                   "--plot": plot}, inputs=[p for src in sources for p in src.paths]
                  + [p for p in files if p], force=force, ours=_made_by_predict, command="predict")


def _made_by_predict(path):
    """Whether an existing output path holds what predict writes (its CSV, sidecar, timeline), so
    a rerun may replace it: featbench's other files (an exported model, codes, predictions) are
    never a predict output, whoever wrote them."""
    return made_by_featbench(path) and featbench_data_file(path) is None
