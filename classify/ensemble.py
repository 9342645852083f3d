"""Majority-vote ensembles of classifier runs (Method A's ensembles (1)-(3)).

An ensemble reads its members' predictions files (``results/<ds>/predictions/<run>.h5``, written
by ``featbench classify``: ``/frames``, ``/labels``, ``/scores``, ``/decisions``, ``/fold`` and
the attrs ``aus``, ``thresholds``...) and votes per AU and frame.

The vote itself (how members' decisions combine, ties, the score) is stated once in
:mod:`classify.vote`.

Presets (paper section "ensembles"; one member per network family, the family's SVM run)
----------------------------------------------------------------------------------------------
``fe``
    frozen-code (feature extraction) runs: for each network family, the first model of
    :data:`FAMILY_PREFERENCE` whose ``<model>__full__svm`` run exists. Families are the extract
    registry's ``spec.family``. The quick pipeline gives ``hog__full__svm``,
    ``dlib_face__full__svm``, ``alexnet__full__svm`` and ``cnn_f__full__svm``. Where LSTM runs
    exist (``<model>__full__lstm``, ``featbench classify --clf lstm``), one per family joins
    as a further member: the paper's first ensemble mixes SVM and LSTM members.
``fe+region``
    ``fe`` plus the region-based SVM runs (``<model>__auto__svm``) of the same families.
``fe+ft``
    ``fe`` with the fine-tuned runs on full faces (one per network: CNN-F in the paper, any
    ``tv:`` / ``timm:`` network that was fine-tuned too) in place of the weakest SVM member, and
    the SVM on a fine-tuned net's codes (``<model>-ft__full__svm``) when it exists. The weakest is
    the member with the lowest mean validation F1 (:func:`weakest_member`; the paper's was
    AlexNet-SVM, which is also the choice when no member has validation scores).
``fe+ft+region``
    ``fe+ft`` plus the region-based runs (frozen-code SVMs and fine-tuned nets on regions).

Random-init runs never vote in a preset
---------------------------------------
A run of a randomly initialised network (``weights`` = ``random:<seed>``, or a fine-tuned
network, or codes of one, that started from random weights) is a control that shows what
pretraining adds, not an ensemble member: every preset leaves it out (:func:`random_init_runs`)
and says so in the ensemble's notes. Name it in ``--members`` to vote it anyway.
"""

import hashlib
import json

import numpy as np

from featbench.core.errors import (FeatbenchError, MissingRunError, StoreError, UsageError,
                                   did_you_mean)
from featbench.core.identity import RunKey, format_members, weights_of
from featbench.core.metrics import PRESENT_AT
from featbench.core.modelfile import read_manifest
# the predictions reader lives beside its writer (the statistics read it too); kept importable here
from featbench.core.results import read_predictions, run_table, write_predictions, write_run  # noqa: F401
from featbench.core.workspace import safe_name

from classify.kinds import member_fingerprint
from classify.task import get_task
from classify.learn.writer import replace_folder
from classify.vote import score_scales

PRESETS = ("fe", "fe+region", "fe+ft", "fe+ft+region")

#: within a family, which model represents it in a preset (first with a run wins): the paper's
#: strongest frozen-code nets first, so a full run takes VGG-Face over VGG-16, ResNet-152 over -50
FAMILY_PREFERENCE = ("vgg_face", "resnet152", "resnet50", "vgg16", "cnn_s", "cnn_m", "cnn_f",
                     "googlenet", "zfnet", "alexnet", "dlib_face", "hog")

#: the classifier a preset member uses (the paper's ensembles are built from SVM runs)
PRESET_CLF = "svm"
#: the sequence classifier whose runs join every preset as extra members where they exist (the
#: paper's first ensemble mixes SVM and LSTM members)
SEQUENCE_CLF = "lstm"


# members ---------------------------------------------------------------------------------------
def command_for_run(run):
    """Return the featbench command that makes classifier run ``run`` (for error messages)."""
    try:
        key = RunKey.parse(run)
    except UsageError:
        return "featbench classify ... (see featbench classify --help)"
    model, region, clf = key.model, key.region, key.clf
    if clf == "vote":
        return f"featbench ensemble --name {model} --members ..."
    if clf in ("finetune", "ft"):
        return f"featbench finetune --model {model} --region {region}"
    if clf in ("ridge", "svr"):
        return f"featbench classify --task intensity --clf {clf} --model {model} --region {region}"
    return f"featbench classify --clf {clf} --model {model} --region {region}"


def _families():
    """Return {model: family} from the extract registry (a model not in it is its own family)."""
    try:
        from extract.registry import list_specs
    except ImportError:  # extract not installed: each model is its own family
        return {}
    return {spec.name: spec.family for spec in list_specs()}


def _existing_runs(workspace, dataset):
    pred_dir = workspace.results_dir(dataset) / "predictions"
    if not pred_dir.is_dir():
        return set()
    return {p.stem for p in pred_dir.glob("*.h5") if not p.name.startswith(".")}


def _key(run):
    """The RunKey of a run name, None for a file name that is not one."""
    try:
        return RunKey.parse(run)
    except UsageError:
        return None


def _is_finetuned(run):
    key = _key(run)
    return key is not None and (key.clf in ("finetune", "ft") or "ft" in key.tags
                                or key.model.endswith("-ft"))


def _finetuned_members(runs, tag):
    """Return the fine-tuned runs of setting ``tag``: one per (model, region, clf).

    A fine-tuning run's variant tags (``ml``, ``fc67``, ``headonly``, ``from<layer>``:
    :func:`classify.finetune.is_variant_tag`) say how it was trained, not which protocol or
    setting it belongs to, so they are ignored when matching ``tag``; of several variants of
    one network and region the one with the fewest (the paper's per-AU run) is taken.
    """
    try:
        from classify.finetune import is_variant_tag
    except ImportError:  # classify not installed: no tag is a variant
        def is_variant_tag(t):
            return False

    chosen = {}
    for run in sorted(r for r in runs if _is_finetuned(r)):
        try:
            key = RunKey.parse(run)
        except UsageError:
            continue
        variants = [t for t in key.tags if is_variant_tag(t)] if key.clf == "ft" else []
        setting = "-".join(t for t in key.tags if t not in variants) or None
        if setting != tag:
            continue
        slot = (key.model, key.region, key.clf)
        if slot not in chosen or len(variants) < chosen[slot][0]:
            chosen[slot] = (len(variants), run)
    return sorted(run for _, run in chosen.values())


def _open_zoo_models(runs, known):
    """The ``tv:`` / ``timm:`` networks (file-name form) with runs: each its own family.

    They are not in the registry's list, so a preset would never see them; codes of a
    fine-tuned network (``<model>-ft``) are not frozen codes and stay out.
    """
    models = {k.model for k in map(_key, runs) if k is not None}
    return sorted(m for m in models if m.startswith(("tv-", "timm-")) and not m.endswith("-ft")
                  and m not in known)


def validation_f1(workspace, dataset, run):
    """Mean over folds and AUs of a classifier run's validation F1 (its settings.json), or nan."""
    try:
        settings = json.loads((workspace.models_dir(dataset, run) / "settings.json").read_text())
        vals = [float(e["val_f1"]) for fold in settings["folds"] for e in fold["aus"].values()
                if "val_f1" in e]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return float("nan")
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def weakest_member(workspace, dataset, runs):
    """Return the run of ``runs`` that a fine-tuned network replaces in ``fe+ft`` (or None).

    The weakest by mean validation F1 (chosen on the validation subjects, never test); when no
    run has validation scores, the AlexNet run, as the paper replaced AlexNet-SVM.
    """
    scores = {r: validation_f1(workspace, dataset, r) for r in runs}
    scored = {r: v for r, v in scores.items() if np.isfinite(v)}
    if scored:
        return min(scored, key=lambda r: (scored[r], r))
    return next((r for r in runs if _key(r).model == "alexnet"), None)


def run_weights(workspace, dataset, run):
    """The ``weights`` attribute of a run's predictions file ("" when it has none)."""
    import h5py

    try:
        with h5py.File(workspace.predictions_path(dataset, run), "r") as f:
            w = f.attrs.get("weights", "")
    except (OSError, KeyError):
        return ""
    return w.decode() if isinstance(w, bytes) else str(w)


def is_random_init(workspace, dataset, run, _seen=None):
    """True when ``run``'s network started from random weights (controls: see the module docstring).

    ``finetuned:<run>`` weights (codes of a fine-tuned network) are followed to the run that
    trained it: codes of a network fine-tuned from ``random:0`` are a control too.
    """
    seen = set() if _seen is None else _seen
    if run in seen:
        return False
    seen.add(run)
    for w in weights_of(run_weights(workspace, dataset, run)):
        if w.is_random:
            return True
        if w.kind == "finetuned" and is_random_init(workspace, dataset, w.name, seen):
            return True
    return False


def random_init_runs(workspace, dataset, runs):
    """The runs of ``runs`` whose networks started from random weights (never preset members)."""
    return sorted(r for r in runs if is_random_init(workspace, dataset, r))


def resolve_preset(workspace, dataset, preset, *, tag=None):
    """Return the member runs of ``preset`` (see the module docstring), in family order.

    ``tag`` selects runs of a non-default setting (``literature`` for that protocol...): the
    members are then ``<model>__<region>__svm__<tag>``.

    Raises
    ------
    UsageError
        Unknown preset.
    FeatbenchError
        ``fe+ft*`` before any fine-tuning run exists.
    MissingRunError
        Fewer than two members: names the runs and commands that would make them.
    """
    if preset not in PRESETS:
        raise UsageError(did_you_mean(preset, PRESETS, what="ensemble preset"))
    runs = _existing_runs(workspace, dataset)
    runs -= set(random_init_runs(workspace, dataset, runs))  # controls, not members
    families = _families()
    order = list(FAMILY_PREFERENCE) + sorted(set(families) - set(FAMILY_PREFERENCE))
    order += _open_zoo_models(runs, order)

    def per_family(region, clf=PRESET_CLF):
        chosen, seen = [], set()
        for model in order:
            fam = families.get(model, model)
            run = str(RunKey(model, region, clf, tag or ()))
            if fam not in seen and run in runs:
                chosen.append(run)
                seen.add(fam)
        return chosen

    members = per_family("full")
    members += per_family("full", SEQUENCE_CLF)  # the paper's first ensemble: SVM + LSTM members
    if "ft" in preset:
        ft = _finetuned_members(runs, tag)
        ft_full = [r for r in ft if _key(r).region == "full"]
        if not ft_full:
            raise FeatbenchError(
                f"preset {preset!r} needs fine-tuned runs from pretrained weights, and none exist "
                f"yet in {workspace.results_dir(dataset) / 'predictions'} (random-init ones are "
                "controls and never vote); use --preset fe or fe+region (or make one with: "
                "featbench finetune --model dlib_face --head multilabel)")
        # the paper: the fine-tuned CNN-F replaces the weakest member (AlexNet-SVM there)
        weakest = weakest_member(workspace, dataset, [r for r in members if _key(r).clf == PRESET_CLF])
        members = [r for r in members if r != weakest] + ft_full
    if "region" in preset:
        members += per_family("auto")
        if "ft" in preset:
            members += [r for r in ft if _key(r).region != "full" and r not in members]
    if len(members) < 2:
        want = [str(RunKey(m, "full", PRESET_CLF, tag or ()))
                for m in ("hog", "dlib_face", "alexnet", "cnn_f")]
        lacking = [r for r in want if r not in runs]
        raise MissingRunError(
            f"preset {preset!r} needs at least 2 member runs, found {len(members)} "
            f"({', '.join(members) or 'none'}); missing e.g. {lacking[0]}: make it with "
            f"{command_for_run(lacking[0])}" if lacking else
            f"preset {preset!r} found fewer than 2 member runs")
    return members


def _row_thresholds(pred, rows):
    """Return the (len(rows), k) threshold each row was decided with (per fold when stored)."""
    ft = pred.get("fold_thresholds")
    fold = pred["fold"][rows].astype(int)
    if ft is not None and ft.ndim == 2 and ft.shape[1] == len(pred["aus"]) and \
            fold.size and fold.max() < ft.shape[0]:
        return ft[fold]
    return np.broadcast_to(pred["thresholds"], (len(rows), len(pred["aus"])))


def _key_list(frames):
    return [tuple(row) for row in frames.tolist()]


def align_members(preds, names):
    """Restrict every member to the frames and AUs they all have; return notes on what was dropped."""
    notes = []
    keys = [_key_list(p["frames"]) for p in preds]
    common = set(keys[0]).intersection(*keys[1:])
    first = [i for i, k in enumerate(keys[0]) if k in common]
    if not first:
        raise StoreError("the members share no test frame (" + ", ".join(names) +
                         "): were they run on different data sets or protocols?")
    dropped = max(len(k) for k in keys) - len(first)
    if dropped:
        notes.append(f"{dropped} frames not scored by every member were dropped "
                     f"({len(first)} kept)")
    aus = [a for a in preds[0]["aus"] if all(a in p["aus"] for p in preds[1:])]
    all_aus = sorted({a for p in preds for a in p["aus"]})
    if not aus:
        raise StoreError("the members share no AU (" + ", ".join(names) + ")")
    if len(aus) < len(all_aus):
        notes.append("AUs not scored by every member were left out: " +
                     ", ".join(a for a in all_aus if a not in aus))
    order = [keys[0][i] for i in first]
    out = []
    for p, k in zip(preds, keys):
        pos = {key: i for i, key in enumerate(k)}
        rows = np.array([pos[key] for key in order], dtype=np.int64)
        cols = np.array([p["aus"].index(a) for a in aus], dtype=np.int64)
        out.append({
            "frames": p["frames"][rows], "labels": p["labels"][rows][:, cols],
            "scores": p["scores"][rows][:, cols], "decisions": p["decisions"][rows][:, cols],
            "fold": p["fold"][rows], "thresholds": _row_thresholds(p, rows)[:, cols],
            **({"intensities": p["intensities"][rows][:, cols]} if "intensities" in p else {}),
        })
    labels = out[0]["labels"]
    for p, name in zip(out[1:], names[1:]):
        if not np.array_equal(p["labels"], labels):
            raise StoreError(f"member {name} has other labels than {names[0]} on the same frames "
                             "(another --threshold or data set?); rerun it")
    return out, aus, notes


def _control_runs(workspace, dataset):
    """The random-init classifier runs of the workspace (what a preset left out), votes aside."""
    runs = random_init_runs(workspace, dataset, _existing_runs(workspace, dataset))
    return [r for r in runs if _key(r) is not None and _key(r).clf != "vote"]


def _member_manifest(workspace, dataset, run):
    try:
        return read_manifest(workspace.models_dir(dataset, run))
    except FeatbenchError:  # a member without a model (trained by an older featbench)
        return None


def write_vote_model(workspace, dataset, run, members, aus, weights, scales, *, task="occurrence"):
    """Write the ``vote`` run's model folder: its members, their score scales, fingerprints.

    The scales are the members' on the frames the ensemble voted on, so that predict breaks a
    tie on new frames as the ensemble broke it there; a member's fingerprint (date and tensor
    digests) lets loading refuse a member trained again since.
    """
    from classify.basekinds import save_vote  # the kinds' module: scorers, torch, loaded here only
    from classify.kinds import ModelFields

    manifests = [_member_manifest(workspace, dataset, m) for m in members]
    alignment = next(((m.get("preprocessing") or {}).get("alignment") for m in manifests if m), {})
    final = workspace.models_dir(dataset, run)
    fields = ModelFields(run=run, aus=aus, weights=weights, dataset=dataset, task=task,
                         preprocessing={"model": "", "regions": {}, "alignment": alignment or {}})
    replace_folder(final, lambda tmp: save_vote(
        tmp, {"members": members, "scales": np.asarray(scales, np.float64),
              "fingerprints": [member_fingerprint(m) for m in manifests]}, fields))
    return final


def members_task(preds, names):
    """Return the one task of the members' runs; UsageError when they mix occurrence and intensity."""
    tasks = {str(p.get("task") or "occurrence") for p in preds}
    if len(tasks) > 1:
        kinds = ", ".join(f"{n} ({p.get('task') or 'occurrence'})" for p, n in zip(preds, names))
        raise UsageError(f"the members mix occurrence and intensity runs ({kinds}): an ensemble "
                         "combines runs of one task")
    return tasks.pop()


def _combine(preds, members):
    """Align the members and combine them as their task asks (:meth:`Task.combine`: the vote of
    occurrence runs, the mean of intensity runs); return ``(task, aligned, aus, notes,
    decisions, scores, thresholds)``."""
    threshold = int(preds[0].get("label_threshold") or PRESENT_AT)
    task = get_task(members_task(preds, members)).at_threshold(threshold)
    aligned, aus, notes = align_members(preds, members)
    decisions, scores, thresholds = task.combine(np.stack([p["decisions"] for p in aligned]),
                                                 np.stack([p["scores"] for p in aligned]),
                                                 np.stack([p["thresholds"] for p in aligned]))
    return task, aligned, aus, notes, decisions, scores, thresholds


def _checked_members(workspace, dataset, members):
    """The member runs, each once; at least two, each with its predictions file."""
    members = list(dict.fromkeys(m.strip() for m in members if m.strip()))
    if len(members) < 2:
        raise UsageError(f"an ensemble needs at least 2 members, got {len(members)}: {members}")
    for run in members:
        if not workspace.predictions_path(dataset, run).exists():
            raise MissingRunError(
                f"member run {run!r} has no predictions "
                f"({workspace.predictions_path(dataset, run)}); make it with: {command_for_run(run)}")
    return members


def preset_run_name(workspace, dataset, preset, *, tag=None):
    """Return the name :func:`ensemble_run` gives ``preset``'s ensemble (``ensemble-fe__full__vote``).

    The region is the members' one when they share it, else ``mixed`` — also when the members
    cannot be resolved (a failed ensemble's row is written under the name it would have had).
    """
    try:
        regions = {_key(r).region if _key(r) else "" for r in
                   resolve_preset(workspace, dataset, preset, tag=tag)}
    except FeatbenchError:
        regions = set()
    region = regions.pop() if len(regions) == 1 else "mixed"
    return str(RunKey(safe_name(f"ensemble-{preset}"), region or "mixed", "vote", tag or ()))


def _vote_meta(preds, members, dataset, task, *, name, preset, tag):
    """Return the vote run's name and its summary row's columns (``model``: the ensemble's
    name, :func:`ensemble_run`'s default; ``region``: the members' when they share it, else
    ``mixed``; ``weights``: each member's)."""
    regions = {p.get("region", _key(r).region if _key(r) else "") for p, r in zip(preds, members)}
    region = regions.pop() if len(regions) == 1 else "mixed"
    if name is None:
        name = (f"ensemble-{preset}" if preset else
                "vote-" + hashlib.sha256(",".join(sorted(members)).encode()).hexdigest()[:8])
    run = str(RunKey(safe_name(name), region or "mixed", "vote", tag or ()))
    weights = format_members([(p.get("model", _key(r).model if _key(r) else r), p.get("weights", "?"))
                              for p, r in zip(preds, members)])
    protocols = sorted({str(p.get("protocol", "")) for p in preds} - {""})
    return run, {"model": name, "region": region, "clf": "vote", "weights": weights,
                 "protocol": ",".join(protocols), "dataset": dataset, "members": ",".join(members),
                 "task": task.name, **task.vote_meta()}


def ensemble_run(workspace, dataset, *, members=None, preset=None, name=None, tag=None):
    """Vote the members' decisions and write the ensemble like a classifier run (``clf = vote``).

    Parameters
    ----------
    workspace : Workspace
    dataset : str
    members : list of str, optional
        Run names (``alexnet__full__svm`` ...) whose predictions files exist.
    preset : str, optional
        One of :data:`PRESETS` (default ``fe`` when ``members`` is not given).
    name : str, optional
        The ensemble's name, its ``model`` column; default ``ensemble-<preset>``, or
        ``vote-<8 hex of the member list>`` for ``members``.
    tag : str, optional
        With ``preset``: take the members run with this non-default setting (their names end
        in ``__<tag>``, e.g. ``literature`` for that protocol); the ensemble's name carries it.

    Returns
    -------
    dict
        ``run``, ``csv`` (Path), ``predictions`` (Path), ``models_dir`` (Path), ``members`` (list), ``aus``,
        ``frames`` (int), ``mean_f1``, ``mean_accuracy``, ``notes`` (list of str: what was dropped).

    Raises
    ------
    MissingRunError
        A member's predictions file does not exist (names it and the command that makes it).
    StoreError
        Members that share no frame or AU, or disagree on labels.
    """
    if members and preset:
        raise UsageError("give either --members or --preset, not both")
    controls = []
    if not members:
        preset = preset or "fe"
        members = resolve_preset(workspace, dataset, preset, tag=tag)
        controls = _control_runs(workspace, dataset)
    members = _checked_members(workspace, dataset, members)
    preds = [read_predictions(workspace.predictions_path(dataset, r)) for r in members]
    task, aligned, aus, notes, decisions, scores, thr = _combine(preds, members)
    if controls:
        notes.insert(0, f"random-init runs are controls, not members (name them in --members to "
                        f"vote them): {', '.join(controls)}")
    labels, fold = aligned[0]["labels"], aligned[0]["fold"]
    run, meta = _vote_meta(preds, members, dataset, task, name=name, preset=preset, tag=tag)
    rows = task.vote_rows(aligned[0], decisions, scores, aus)
    pred_path = workspace.predictions_path(dataset, run)
    write_predictions(pred_path, frames=aligned[0]["frames"], labels=labels, scores=scores,
                      decisions=decisions, fold=fold, aus=aus, thresholds=thr,
                      intensities=aligned[0].get("intensities"), run=run,
                      **{k: v for k, v in meta.items() if k != "members"}, members=members)
    csv = write_run(workspace, dataset, run, rows, meta=meta, columns=task.COLUMNS,
                    fields=task.summary_fields, predictions=pred_path)
    models_dir = write_vote_model(workspace, dataset, run, members, aus, meta["weights"],
                                  score_scales(np.stack([p["scores"] for p in aligned])),
                                  task=task.name)
    mean = run_table(rows, columns=task.COLUMNS)[0][-1]
    return {"run": run, "csv": csv, "predictions": pred_path, "members": members, "aus": aus,
            "models_dir": models_dir, "frames": int(len(labels)), "mean_f1": mean["f1"],
            "mean_accuracy": mean["accuracy"], "notes": notes, "task": task.name,
            **{k: v for k, v in task.summary_fields(mean, rows).items() if k.startswith("mean_")}}
