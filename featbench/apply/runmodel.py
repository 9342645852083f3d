"""A finished run as something that can be applied to new faces, from a workspace or a model file.

Every run kind saves one format (:mod:`featbench.core.modelfile`: ``manifest.json`` +
safetensors tensors under ``results/<ds>/models/<run>/``) and loads into one scorer,
:class:`classify.infer.RunModel`, through the registry of run kinds (:mod:`classify.kinds`):

:func:`load_run`
    a run of the workspace (or ``best``, the highest mean F1 of summary.csv);
:func:`load_model_file`
    a file written by ``featbench export`` (:func:`export_run`): the same content in ONE
    ``.safetensors`` file. A pickle (featbench 0.1's joblib export), a torch checkpoint or any
    other file is refused from its first bytes, never opened by pickle, with one line that says
    how to re-export.

Both load paths run the one validation of a model file (:func:`open_checked`) before any value
of it is used and before predict decodes any input: the manifest's schema and the safetensors
headers when the file is opened (:mod:`featbench.core.manifest`), then what the run's kind
needs of its tensors, their sha256 and a vote's members (:func:`classify.modelcheck.check_model`).
Every failure is one line naming the file (exit status 2).

``featbench export --half`` stores floating tensors as float16. A classify run on the codes of a
fine-tuned network carries that network's weights file in the export (found in the workspace
by its hash), since the network cannot be named.
"""

from pathlib import Path

from featbench.core.errors import MissingRunError, UsageError, WeightsError, did_you_mean
from featbench.core.calibrate import CALIBRATION_TAGS
from featbench.core.modelfile import MANIFEST, export_model, open_model
from featbench.core.results import read_summary
from featbench.core.splits import without_repeats
from featbench.core.workspace import Workspace

from classify.kinds import load_scorer
from classify.task import list_tasks
from classify.modelcheck import check_model
from extract.download import file_sha256
from classify.infer import BIDIRECTIONAL_WINDOW, RunModel  # noqa: F401 - what predict applies

__all__ = ["RunModel", "BIDIRECTIONAL_WINDOW", "resolve_run", "load_run", "load_model_file",
           "export_run", "finetuned_file"]


def resolve_run(workspace, dataset, run):
    """Return the run name ``run`` stands for: ``best`` is the highest mean F1 of summary.csv
    among the runs the report ranks (a repeated split's reruns, ``kfold:K:rN``, are left out).

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
    ok = without_repeats(ok)
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
        Unknown run (the message lists the closest and where to see all), or a run without a
        model folder.
    ModelFormatError
        A run folder saved by featbench 0.1 (pickles): it says to train the run again.
    StoreError
        A model folder that lacks its files.
    """
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    run = resolve_run(workspace, dataset, run)
    known = _known_runs(workspace, dataset)
    if run not in known:
        raise MissingRunError(did_you_mean(run, known or ["(none yet)"], what=f"run of {dataset}",
                                           hint=f"runs with models in {workspace.results_dir(dataset)}: "
                                                + (", ".join(known) or "none; make one with featbench classify")))
    folder = workspace.models_dir(dataset, run)
    if not folder.is_dir():
        raise MissingRunError(f"{folder}: run {run} has no saved model (run it again)")
    return _applicable(load_scorer(_predictable(open_checked(folder))))


def open_checked(path):
    """Open a run folder or an export and validate it fully (see the module docstring).

    Raises
    ------
    ModelFormatError, StoreError, UsageError, MissingRunError
        One line naming the file and what is wrong with it.
    """
    return check_model(open_model(path))


def load_model_file(path):
    """Read a file written by :func:`export_run` (or a run folder) into a :class:`RunModel`.

    Raises
    ------
    ModelFormatError
        Not a featbench model file: a pickle, a joblib or torch file, another format version
        (one line naming the file and how to re-export; nothing in the file is run), a damaged
        file, or one whose content does not hold together (:func:`open_checked`).
    StoreError
        The file does not exist.
    """
    return _applicable(load_scorer(_predictable(open_checked(path))))


def _predictable(model_file):
    """``model_file`` if its run is of a task of the task registry (:mod:`classify.task`:
    scores -> 0/1 decisions per AU), which predict can apply."""
    m = model_file.manifest
    task = m.get("task", "occurrence")
    if task not in list_tasks():
        raise UsageError(f"{model_file.path}: run {m['run']} predicts AU {task}; featbench predict "
                         f"applies runs of the tasks {', '.join(list_tasks())} so far")
    return model_file


def _applicable(model):
    """``model`` if predict can apply it: a person-calibrated run must say how it calibrated
    (runs saved before the manifest held it are refused)."""
    calibrated = set(CALIBRATION_TAGS.values()) & set(model.run.tags)
    said = (model.source.manifest.get("preprocessing") or {}).get("calibrate")
    if calibrated and said in (None, "", "none"):
        raise UsageError(f"{model.source.path}: run {model.run} was trained on person-calibrated "
                         "codes but its model does not say how (saved by an older featbench): "
                         "train it again")
    return model


def finetuned_file(workspace, wid):
    """Return the weights file of ``finetuned:<run> sha256:...`` in ``workspace``, or None.

    A fine-tuned network's codes (``featbench extract --weights results/<ds>/models/<run>/
    model.safetensors``) name the run that trained it; its files are searched for the hash.
    """
    if workspace is None or wid.kind != "finetuned":
        return None
    import glob

    # the run's name is matched as it is (a name is no pattern); without a hash only a file
    # that is the one candidate is taken, never the first of several
    folders = sorted(Path(workspace.root, "results").glob(f"*/models/{glob.escape(wid.name)}"))
    files = sorted(p for f in folders if f.is_dir() for p in f.iterdir()
                   if p.suffix in (".safetensors", ".pt") and p.name != MANIFEST)
    if not wid.sha256:
        return files[0] if len(files) == 1 else None
    return next((p for p in files if file_sha256(p) == wid.sha256), None)


def _carried_files(model, workspace):
    """``{weights identity (string form, the model file's key): file}`` of the fine-tuned
    networks whose codes ``model`` reads."""
    carry = {}
    for m, wid in model.networks():
        if wid.kind != "finetuned" or model.network_for((m, wid)) is not None:
            continue
        path = finetuned_file(workspace, wid)
        if path is None:
            raise WeightsError(f"run {model.run} reads codes of {m} fine-tuned by {wid.name}, "
                               "whose weights file is not in this workspace: it cannot be exported")
        carry[str(wid)] = path
    return carry


def export_run(model, out, workspace=None, *, half=False):
    """Write ``model`` (a :class:`RunModel` loaded from a run folder) to ONE model file ``out``.

    The same manifest and tensors as the run folder, in one ``.safetensors`` file (a vote's
    members inside; a fine-tuned network whose codes a classify run reads, carried from
    ``workspace``), written through a temporary file and renamed.

    Parameters
    ----------
    model : RunModel
    out : path
    workspace : Workspace, optional
        Where a carried fine-tuned network's file is found.
    half : bool
        Store floating tensors as float16 (thresholds stay exact).

    Raises
    ------
    WeightsError
        A carried network's file is not in ``workspace``.
    """
    if model.source is None:
        raise UsageError(f"run {model.run} was not loaded from a model file: nothing to export")
    return export_model(model.source, out, half=half, carry=_carried_files(model, workspace))
