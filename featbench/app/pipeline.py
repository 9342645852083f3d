"""``featbench run``: the whole frozen-feature protocol of Method A in one call.

Stages, each skipped when its output is already there:

1. data      the synthetic set is generated when its folder does not exist (real sets: --root)
2. align     the aligned-face cache (no-op when it matches the frame table)
3. extract   one feature file per network (a complete file is reused; a partial one resumes)
4. classify  per-AU classifiers per network / region / classifier (a run whose CSV and
             predictions are newer than its features and that did not fail is kept), then the
             preset's fine-tuning runs (``featbench finetune``; kept while newer than the
             aligned faces) and the classifiers on a fine-tuned network's codes
5. ensemble  the paper's majority-vote presets
   repeats   with ``repeats`` (a ``kfold:K`` protocol): every frozen-code classifier run and the
             votes built from them only (``fe``, ``fe+region``) again on N new assignments of
             the subjects to folds (``kfold:K:r1`` ...); the fine-tuned networks, the classifiers
             on their codes and the votes with them are not repeated (one fine-tuning per fold
             and repeat would cost more than the rest of the run, and codes of a network
             fine-tuned on one split leak test subjects into another's training)
6. report    ``results/<dataset>/report.md`` and its charts (with the repeats table)

Every run written stores its intervals (:mod:`featbench.core.stats`) at the settings given as
``ci`` (``--ci-level``, ``--ci-resamples``).

Presets
-------
``quick`` (default; at most 300 calibration units, about 10 minutes on a slow 2-core machine)
    what every machine has: ``hog`` and ``dlib_face``, dlib's face-recognition ResNet,
    pretrained on faces and shipped with featbench, each on full faces and on each AU's region:
    their frozen codes (SVM and LDA), and dlib's network fine-tuned for the AUs
    (:data:`QUICK_FINETUNE`), with an SVM on the fine-tuned network's codes; ensembles ``fe``,
    ``fe+region``, ``fe+ft`` and ``fe+ft+region`` (the fine-tuned members in place of the
    weakest frozen one). ImageNet CNNs (``alexnet``, ``tv:mobilenet_v2``) join when their
    files are cached or can be downloaded (verified); otherwise the run leaves them out and
    says so in one line, and the report says what they would add. ``--controls`` runs them from ``random:0`` instead, and
    ``dlib_face`` fine-tuned from ``random:0`` (:data:`QUICK_FT_CONTROL`): controls, flagged
    as random init everywhere, never ensemble members.
``paper``
    every network of the paper (AlexNet, ZFNet, CNN-F/M/S, VGG-16, VGG-Face, GoogLeNet,
    ResNet-50, ResNet-152) with ``imagenet`` weights, SVM and LDA on full faces, region-based
    runs for VGG-Face and CNN-F; the paper's fine-tuned CNN-F (:data:`PAPER_FINETUNES`: per-AU
    networks on the whole face with every FC layer re-initialised, per-AU networks on regions
    with fc6 + fc7 re-initialised, and SVM on the fc6 codes of a fine-tuned CNN-F); ensembles
    ``fe``, ``fe+region``, ``fe+ft`` and ``fe+ft+region``. Every weight file is
    fetched before any long work; one that cannot be had stops the run, naming every file;
    ``weights="random:0"`` runs the whole preset as a random-weight control. ZFNet has no
    published weights and always runs as a random-init control.

Random-init runs are controls: they never vote in a preset ensemble
(:func:`classify.ensemble.random_init_runs`).
"""

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from featbench.app.claims import RUN_PLAN
from featbench.app.report import headline, make_report
from featbench.core.align import ensure_aligned
from featbench.core.datasets import load_dataset
from featbench.core.errors import FeatbenchError, UsageError, WeightsError, did_you_mean
from featbench.core.identity import RunKey, WeightsId
from featbench.core.results import read_summary_rows, record_failure
from featbench.core.splits import make_splits, repeat_protocols, trained_test_subjects
from featbench.core.stats import current_settings, using_settings
from featbench.core.workspace import atomic_write_text

from classify.ensemble import ensemble_run, preset_run_name
from classify.finetune import FinetuneConfig, finetune_run, finetune_run_name
from classify.run import classify_run, classify_run_key, run_tag
from extract.catalog import entry_for
from extract.download import fetch, is_offline, mirrored, where
from extract.extractor import extract_features
from extract.registry import get_spec
from extract.store import stale_codes


#: what a preset does with a CNN whose pretrained file cannot be had (not cached, no download)
MISSING_WEIGHTS = ("refuse", "leave-out", "random")


@dataclass(frozen=True)
class Preset:
    """What one ``featbench run`` preset runs.

    Attributes
    ----------
    models : tuple of str
        Networks extracted on full faces and classified with every classifier of ``clfs``.
    region_models : tuple of str
        Networks also extracted on the three regions and classified region-based (``auto``).
    clfs, region_clfs : tuple of str
        Classifiers on full faces and on regions.
    ensembles : tuple of str
        Ensemble presets (:data:`classify.ensemble.PRESETS`).
    missing_weights : {"refuse", "leave-out", "random"}
        A CNN whose pretrained file is neither cached nor downloadable: stop before any work
        naming every file (paper), leave it out with one line (quick), or run it from
        ``random:0`` as a control, flagged everywhere (``--controls``).
    finetunes : tuple of Finetune
        Fine-tuning runs, trained in the classify stage.
    control_finetunes : tuple of Finetune
        Fine-tuning runs that are controls (random init), run only with ``--controls``.
    pinned_weights : tuple of (model, weights)
        Override the weights rule for those networks.
    """

    name: str
    models: tuple
    region_models: tuple
    clfs: tuple = ("svm", "lda")
    region_clfs: tuple = ("svm", "lda")
    ensembles: tuple = ("fe", "fe+region")
    missing_weights: str = "refuse"
    finetunes: tuple = ()
    control_finetunes: tuple = ()
    pinned_weights: tuple = ()

    def __post_init__(self):
        if self.missing_weights not in MISSING_WEIGHTS:
            raise UsageError(f"preset {self.name}: missing_weights must be one of "
                             f"{', '.join(MISSING_WEIGHTS)}, got {self.missing_weights!r}")

    def networks(self):
        """Every network the preset needs weights for: extracted, region-based, fine-tuned."""
        return tuple(dict.fromkeys(self.models + self.region_models
                                   + tuple(ft.model for ft in self.finetunes)))

    def with_controls(self):
        """The preset with its controls: CNNs without their pretrained file run from
        ``random:0`` (flagged as random init), and the control fine-tuning runs."""
        return dataclasses.replace(self, missing_weights="random",
                                   finetunes=self.finetunes + self.control_finetunes)


@dataclass(frozen=True)
class Finetune:
    """One ``featbench finetune`` run of a preset.

    Attributes
    ----------
    model : str
        The network (its weights are the preset's for it: :func:`resolve_weights`).
    settings : dict
        Further :class:`classify.finetune.FinetuneConfig` fields (head, reinit, region...).
    code_clfs : tuple of str
        Classifiers trained on the fine-tuned network's codes (``featbench extract --weights
        results/<ds>/models/<run>/model.safetensors`` gives ``<model>-ft``): the paper's "fc6 codes
        after fine-tuning + SVM". Needs one network for all AUs (``multilabel``, full face).
    weights : str, optional
        Starting weights of this run alone (a control: ``random:0``), else the preset's.
    """

    model: str
    settings: dict = field(default_factory=dict)
    code_clfs: tuple = ()
    weights: object = None

    def config(self, weights, protocol):
        return FinetuneConfig(**{**self.settings, "model": self.model,
                                 "weights": self.weights or weights, "protocol": protocol})


#: the paper's fine-tuned CNN-F: per-AU 2-way networks on the whole face with every FC layer
#: re-initialised, and on regions with fc6 + fc7 re-initialised; and its fc6 codes + SVM, taken
#: from one multilabel network (a per-AU run is 12 networks, so it has no one set of codes)
PAPER_FINETUNES = (Finetune("cnn_f", {"reinit": "fc"}),
                   Finetune("cnn_f", {"region": "auto", "reinit": "fc6-fc7"}),
                   Finetune("cnn_f", {"head": "multilabel", "reinit": "fc"}, code_clfs=("svm",)))

#: the quick preset's fine-tuned member: dlib's face ResNet (pretrained on faces, shipped with
#: featbench on every machine), one multilabel network (12x cheaper than per-AU ones); its
#: conv layers kept frozen as the paper keeps CNN-F's, its fc layer (the 128-d face code)
#: trained with a new batch-normed output layer on it (``reinit head``, ``train_from fc``).
#: Of the settings measured on the embedded set (README), this one had the best validation F1
#: (0.80, against 0.31-0.68 when the last blocks trained too): 112-pixel faces, AdamW 1e-3,
#: batches of 16, one epoch (the epoch validation chose); threshold 0, as every quick run's
QUICK_FT_SETTINGS = {"head": "multilabel", "reinit": "head", "train_from": "fc",
                     "input_size": 112, "epochs": 1, "batch_size": 16,
                     "optimizer": "adam", "lr": 1e-3}
QUICK_FINETUNE = Finetune("dlib_face", QUICK_FT_SETTINGS, code_clfs=("svm",))
#: its control (``--controls``): the same network and settings from random weights, which
#: shows what the face pretraining adds
QUICK_FT_CONTROL = Finetune("dlib_face", {**QUICK_FT_SETTINGS, "tag": "rand"}, weights="random:0")

PRESETS = {
    # ImageNet CNNs (alexnet: the paper's; tv:mobilenet_v2: a 14 MB file) run when their files
    # are cached or downloadable, and are left out otherwise (--controls: random:0 controls)
    "quick": Preset("quick", models=("hog", "dlib_face", "alexnet", "tv:mobilenet_v2"),
                    region_models=("hog", "dlib_face"), missing_weights="leave-out",
                    ensembles=("fe", "fe+region", "fe+ft", "fe+ft+region"),
                    finetunes=(QUICK_FINETUNE,), control_finetunes=(QUICK_FT_CONTROL,)),
    "paper": Preset("paper", models=("alexnet", "zfnet", "cnn_f", "cnn_m", "cnn_s", "vgg16",
                                     "vgg_face", "googlenet", "resnet50", "resnet152"),
                    region_models=("vgg_face", "cnn_f"),
                    ensembles=("fe", "fe+region", "fe+ft", "fe+ft+region"),
                    finetunes=PAPER_FINETUNES),
}


def _say(progress, text):
    if progress:
        print(text, flush=True)


def resolve_weights(preset, weights=None, *, progress=False):
    """Return ``{model: (weights, note)}`` for the preset's networks, getting their files first.

    Pretrained files missing from the cache are downloaded here (verified; never when offline),
    before any long work. A network the preset leaves out (``missing_weights="leave-out"``)
    maps to ``(None, why)``.

    Parameters
    ----------
    preset : Preset
    weights : str, optional
        ``imagenet``, ``random[:SEED]`` or a file, for every CNN; default: the preset's rule
        (:attr:`Preset.missing_weights`).
    progress : bool
        Download progress bars.

    Raises
    ------
    WeightsError
        Pretrained weights needed and not to be had (``refuse``): names every missing file and
        the folder.
    """
    plan, missing, failed_hosts = {}, [], set()
    pinned = dict(preset.pinned_weights)
    for model in preset.networks():
        spec = get_spec(model)
        if spec.kind != "torch" or spec.pretrained == "dlib":  # hog; dlib (shipped)
            plan[model] = (spec.default_weights, "")
        elif weights is not None or model in pinned:
            weights_here = pinned.get(model, weights)
            plan[model] = (weights_here, "random init, not pretrained"
                           if WeightsId.parse(weights_here).is_random else "")
        elif not spec.pretrained:  # zfnet: no loadable pretrained weights were ever published
            plan[model] = (spec.default_weights, "no published weights: random init control")
        else:
            plan[model] = _pretrained_or_fallback(spec, preset, missing, progress, failed_hosts)
    if missing:
        folder = missing[0][0].parent
        raise WeightsError(
            f"the {preset.name} preset needs pretrained weights that are not cached and could not "
            f"be downloaded ({missing[0][1]}): " + ", ".join(p.name for p, _ in missing)
            + f" (fetch them with 'featbench weights fetch --all' on a connected machine and "
            f"'featbench weights import' them, or put them in {folder}; or run the preset as a "
            "random-weight control with --weights random:0)")
    return plan


def _host(entry):
    """The host a weights file would be downloaded from (mirror applied), or ""."""
    from urllib.parse import urlparse

    return urlparse(mirrored(entry.urls[0])).netloc if entry.urls else ""


def _pretrained_or_fallback(spec, preset, missing, progress, failed_hosts=None):
    """``("imagenet", note)`` once the file is here (downloading it), else the preset's rule.

    A host that already failed in this plan (``failed_hosts``) is not tried again for the next
    file: on a machine without internet each attempt waits for its connect timeout.
    """
    entry = entry_for(spec)
    failed_hosts = set() if failed_hosts is None else failed_hosts
    try:
        if not where(entry).is_file() and _host(entry) in failed_hosts:
            raise WeightsError(f"{_host(entry)} failed for an earlier file")
        path, _, downloaded = fetch(entry, progress=progress)
    except WeightsError:
        if not is_offline() and not where(entry).is_file():
            failed_hosts.add(_host(entry))
        why = f"{entry.filename} not cached, {'offline' if is_offline() else 'download failed'}"
        if preset.missing_weights == "random":
            return ("random:0", f"random init, not pretrained ({why})")
        if preset.missing_weights == "leave-out":
            return (None, why)
        missing.append((where(entry), why))
        return ("imagenet", "")
    return ("imagenet", f"pretrained ({path.name} {'downloaded' if downloaded else 'cached'})")


def left_out(wplan):
    """``{model: why}`` of the networks a weights plan leaves out (no pretrained file here)."""
    return {m: note for m, (w, note) in wplan.items() if w is None}


def plan_runs(preset, wplan=None):
    """Return the classifier runs of ``preset`` as (model, region, clf) tuples.

    With a weights plan (:func:`resolve_weights`), the networks it leaves out are left out.
    """
    out = left_out(wplan or {})
    runs = [(m, "full", c) for m in preset.models for c in preset.clfs]
    runs += [(m, "auto", c) for m in preset.region_models for c in preset.region_clfs]
    return [r for r in runs if r[0] not in out]


def _run_is_fresh(workspace, dataset, run, features):
    """A run is kept when its CSV and predictions exist, are newer than its features and it did not fail."""
    csv = workspace.run_csv(dataset, run)
    pred = workspace.predictions_path(dataset, run)
    if not (csv.exists() and pred.exists() and features.exists()):
        return False
    if min(csv.stat().st_mtime, pred.stat().st_mtime) < features.stat().st_mtime:
        return False
    summary = workspace.summary_csv(dataset)
    rows = [r for r in read_summary_rows(summary) if r["run"] == run] if summary.exists() else []
    return bool(rows) and not rows[0].get("error")


# --- stages: each plans its steps; one runner runs them; one failure path ----------------------
def _never():
    return False


@dataclass(frozen=True)
class Step:
    """One unit of work of a stage.

    Attributes
    ----------
    name : str
        What the step is called in the output (a network, a run name).
    run : callable
        ``run()`` does the work and returns the one-line outcome to print (or None).
    fresh : callable
        ``fresh()`` is True when the step's output is already there and up to date (kept).
    records : tuple of (run name, meta), or a callable returning one
        The runs whose ``summary.csv`` row a failure of this step writes (with its error); a
        callable is asked at the failure (an ensemble's name depends on the members it found).
    produces : tuple of str
        The runs that exist once the step succeeded or was fresh; a step is skipped when one
        of them already failed (e.g. a classifier run whose features could not be extracted).
    fatal : bool
        A failure stops ``featbench run`` (data, align, report: nothing later can go on);
        otherwise it is recorded and the other steps go on.
    announce : str
        Printed as ``- <name> (<announce>)`` before a long step; its outcome follows indented.
    error_prefix : str
        Put before the error in the failed runs' rows (``extract alexnet: ``).
    """

    name: str
    run: Callable
    fresh: Callable = _never
    records: object = ()
    produces: tuple = ()
    fatal: bool = False
    announce: str = ""
    error_prefix: str = ""


@dataclass
class _Context:
    """What the stages of one ``featbench run`` share: its arguments, plan and outcomes."""

    workspace: object
    dataset: str
    root: object
    preset: Preset
    protocol: str
    tag: object
    wplan: dict
    progress: bool
    table: object = None
    report: object = None
    seconds: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    done: list = field(default_factory=list)
    repeats: tuple = ()
    stages: tuple = ()

    def say(self, text):
        _say(self.progress, text)

    def run_key(self, model, region, clf):
        """The RunKey of a classify run of this ``featbench run`` (:func:`classify_run_key`'s)."""
        return classify_run_key(self.table, model=model, region=region, clf=clf,
                                protocol=self.protocol)

    def run_meta(self, model, region, clf, weights=None):
        """The provenance a failed run's row carries, as a successful run's would."""
        return {"model": model, "region": region, "clf": clf,
                "weights": weights or self.wplan[model][0],
                "protocol": self.protocol, "dataset": self.dataset}


def _data_steps(ctx):
    def run():
        ctx.table = load_dataset(ctx.dataset, root=ctx.root, workspace=ctx.workspace,
                                 generate=True, progress=ctx.progress)
        t = ctx.table
        return (f"{len(t.frames)} frames, {len(t.subjects)} subjects, {int(t.labelled_mask().sum())} "
                f"labelled, AUs {', '.join(t.aus)}")

    return ctx.dataset, [Step(ctx.dataset, run, fatal=True)]


def _align_steps(ctx):
    def run():
        return str(ensure_aligned(ctx.table, ctx.workspace, progress=ctx.progress))

    return "", [Step("aligned faces", run, fatal=True)]


def _extract_steps(ctx):

    spec, steps = ctx.preset, []
    out = left_out(ctx.wplan)
    models = [m for m in dict.fromkeys(spec.models + spec.region_models) if m not in out]
    for model in models:
        w, note = ctx.wplan[model]
        region = "all" if model in spec.region_models else "full"
        records = tuple((str(ctx.run_key(m, r, c)), ctx.run_meta(m, r, c))
                        for m, r, c in plan_runs(spec, ctx.wplan) if m == model)

        def run(model=model, region=region, w=w):
            # codes are derived from this workspace's aligned faces: realigned faces renew them
            why = stale_codes(ctx.workspace.features_path(ctx.dataset, model), ctx.table,
                              ctx.workspace.aligned_path(ctx.dataset))
            if why:
                ctx.say(f"  {model}: stale codes ({why}): extracting them again")
            rep = extract_features(ctx.table, ctx.workspace, model, region=region, weights=w,
                                   overwrite=bool(why), progress=ctx.progress, report=True)
            return rep.summary()  # "already extracted" when a rerun found the codes complete

        steps.append(Step(model, run, records=records, error_prefix=f"extract {model}: ",
                          announce=f"weights {w}{'; ' + note if note else ''}; regions {region}"))
    return f"{len(models)} networks", steps


def _classify_steps(ctx):

    steps = []
    for model, region, clf in plan_runs(ctx.preset, ctx.wplan):
        name = str(ctx.run_key(model, region, clf))
        features = ctx.workspace.features_path(ctx.dataset, model)

        def run(model=model, region=region, clf=clf):
            out = classify_run(ctx.workspace, ctx.dataset, model=model, clf=clf, region=region,
                               protocol=ctx.protocol, table=ctx.table, progress=ctx.progress)
            return f"mean F1 {out['mean']['f1']:.3f} ({out['seconds']:.0f}s)"

        def fresh(name=name, features=features):
            return _run_is_fresh(ctx.workspace, ctx.dataset, name, features)

        steps.append(Step(name, run, fresh=fresh, produces=(name,),
                          records=((name, ctx.run_meta(model, region, clf)),)))
    for ft in ctx.preset.finetunes:
        if ft.weights or ctx.wplan[ft.model][0] is not None:  # else left out, said at the start
            steps += _finetune_steps(ctx, ft)
    return f"{len(steps)} runs", steps


def _finetune_steps(ctx, ft):
    """One preset fine-tuning run (kept while newer than the aligned faces), then its codes' runs."""
    w, note = ctx.wplan[ft.model]
    if ft.weights:
        w, note = ft.weights, ("random init, not pretrained: a control"
                               if WeightsId.parse(ft.weights).is_random else "")
    config = ft.config(w, ctx.protocol)
    name = finetune_run_name(config, ctx.table)
    meta = {**ctx.run_meta(ft.model, config.region, "ft", w), "head": config.head,
            "reinit": config.reinit}

    def run():
        out = finetune_run(ctx.workspace, ctx.dataset, config, table=ctx.table,
                           progress=ctx.progress)
        return (f"mean F1 {out['mean']['f1']:.3f} ({out['meta']['input_size']} px, "
                f"{out['seconds']:.0f}s)")

    def fresh():
        return (_run_is_fresh(ctx.workspace, ctx.dataset, name,
                              ctx.workspace.aligned_path(ctx.dataset))
                and _same_settings(ctx.workspace.models_dir(ctx.dataset, name), config))

    announce = (f"fine-tune: {config.head} head, reinit {config.reinit}, {config.epochs} epochs, "
                f"weights {w}{'; ' + note if note else ''}")
    step = Step(name, run, fresh=fresh, produces=(name,), records=((name, meta),),
                announce=announce)
    splits = make_splits(ctx.table, ctx.protocol)
    if ft.code_clfs and trained_test_subjects(splits, splits):
        # one network per fold: codes of any one of them would score frames it trained on (the
        # check classify makes of the run's record, made here before the run exists)
        ctx.say(f"note: {', '.join(ft.code_clfs)} on the fine-tuned network's codes left out: "
                f"the {ctx.protocol} protocol of {ctx.dataset} has several folds")
        return [step]
    return [step] + [_ft_codes_step(ctx, ft, name, clf) for clf in ft.code_clfs]


def _same_settings(models_dir, config):
    """True when the run in ``models_dir`` was trained with ``config`` (the device aside): other
    weights, epochs or input size retrain it, as new codes redo a classifier run."""
    import json
    from dataclasses import asdict

    try:
        saved = json.loads((models_dir / "settings.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    now = json.loads(json.dumps(asdict(config), default=str))
    return {k: v for k, v in saved.items() if k != "device"} == {k: v for k, v in now.items() if k != "device"}


def _ft_codes_step(ctx, ft, ft_run, clf):
    """``clf`` on the codes of the fine-tuned network of ``ft_run`` (``<model>-ft`` features)."""

    codes = f"{ft.model}-ft"
    name = str(ctx.run_key(codes, "full", clf))
    model_file = ctx.workspace.models_dir(ctx.dataset, ft_run) / "model.safetensors"
    features = ctx.workspace.features_path(ctx.dataset, codes)

    def run():
        if ft_run not in ctx.done or not model_file.exists():
            raise FeatbenchError(f"{model_file}: the fine-tuning run {ft_run} did not leave one "
                                 "network (multilabel, full face), so it has no codes")
        # codes older than the network were made by an earlier training of this run: replaced
        stale = features.exists() and features.stat().st_mtime < model_file.stat().st_mtime
        extract_features(ctx.table, ctx.workspace, ft.model, weights=str(model_file), name=codes,
                         overwrite=stale, progress=ctx.progress)
        out = classify_run(ctx.workspace, ctx.dataset, model=codes, clf=clf, region="full",
                           protocol=ctx.protocol, table=ctx.table, progress=ctx.progress)
        return f"mean F1 {out['mean']['f1']:.3f} ({out['seconds']:.0f}s)"

    def fresh():
        return (model_file.exists() and features.exists()
                and features.stat().st_mtime >= model_file.stat().st_mtime
                and _run_is_fresh(ctx.workspace, ctx.dataset, name, features))

    return Step(name, run, fresh=fresh, produces=(name,),
                records=((name, ctx.run_meta(codes, "full", clf, f"finetuned:{ft_run}")),),
                announce=f"{clf} on the codes of the fine-tuned {ft_run}")


def _ensemble_steps(ctx):
    steps = []
    for ens in ctx.preset.ensembles:
        def run(ens=ens):
            out = ensemble_run(ctx.workspace, ctx.dataset, preset=ens, tag=ctx.tag)
            ctx.done.append(out["run"])
            notes = "".join(f"note: {n}\n  " for n in out["notes"])
            return (f"{notes}{out['run']} = vote of {', '.join(out['members'])}: "
                    f"mean F1 {out['mean_f1']:.3f}")

        def records(ens=ens):  # named as ensemble_run would have named it
            name = preset_run_name(ctx.workspace, ctx.dataset, ens, tag=ctx.tag)
            meta = {"model": f"ensemble-{ens}", "region": RunKey.parse(name).region, "clf": "vote",
                    "protocol": ctx.protocol, "dataset": ctx.dataset}
            return ((name, meta),)

        steps.append(Step(f"ensemble {ens}", run, records=records))
    return ", ".join(ctx.preset.ensembles), steps


def _repeat_steps(ctx):
    """The repeated splits' runs: frozen-code classifiers and their votes (module docstring)."""
    spec = dataclasses.replace(ctx.preset, finetunes=(),
                               ensembles=tuple(e for e in ctx.preset.ensembles if "ft" not in e))
    steps = []
    for protocol in ctx.repeats:
        sub = dataclasses.replace(ctx, preset=spec, protocol=protocol,
                                  tag=run_tag(protocol=protocol))
        steps += _classify_steps(sub)[1] + _ensemble_steps(sub)[1]
    return (f"{len(ctx.repeats)} new splits of {ctx.protocol} ({ctx.repeats[0]} ...): "
            f"{len(steps)} runs; fine-tuned networks not repeated"), steps


def _report_steps(ctx):
    def run():
        ctx.report = make_report(ctx.workspace, ctx.dataset)

    return "", [Step("report", run, fatal=True)]


#: the stages of ``featbench run``, in order: each returns (header detail, steps)
STAGES = (("data", _data_steps), ("align", _align_steps), ("extract", _extract_steps),
          ("classify", _classify_steps), ("ensemble", _ensemble_steps), ("report", _report_steps))


def _record_failure(ctx, step, exc):
    """The one failure path: say it, and write each affected run's row with its error."""
    # a FeatbenchError is bad input; anything else (a torch error in one network) is a bug,
    # kept with its type so the report's failed-runs table says what to fix
    msg = str(exc) if isinstance(exc, FeatbenchError) else f"{type(exc).__name__}: {exc}"
    ctx.say(f"  failed: {msg}" if step.announce else f"- {step.name}: failed: {msg}")
    for run, meta in (step.records() if callable(step.records) else step.records):
        record_failure(ctx.workspace, ctx.dataset, run, f"{step.error_prefix}{msg}", meta=meta)
        ctx.failed.append((run, msg))


def _run_step(ctx, stage, step):
    failed = {r for r, _ in ctx.failed}
    if any(r in failed for r in step.produces):
        return
    if step.fresh():
        ctx.say(f"- {step.name}: up to date, kept")
        ctx.done.extend(step.produces)
        return
    if step.announce:
        ctx.say(f"- {step.name} ({step.announce})")
    t = time.perf_counter()
    try:
        outcome = step.run()
    except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
        if step.fatal:
            raise
        _record_failure(ctx, step, exc)
        return
    ctx.seconds[f"{stage} {step.name}"] = time.perf_counter() - t
    if outcome:
        ctx.say(f"  {outcome}" if step.announce else f"- {step.name}: {outcome}")
    ctx.done.extend(step.produces)


def _run_stage(ctx, i, stage, plan):
    t = time.perf_counter()
    detail, steps = plan(ctx)
    ctx.say(f"\n== [{i}/{len(ctx.stages)}] {stage}{': ' + detail if detail else ''} ==")
    for step in steps:
        _run_step(ctx, stage, step)
    ctx.seconds[stage] = time.perf_counter() - t


def _print_summary(ctx, elapsed):
    print("\n" + headline(ctx.workspace, ctx.dataset))
    print(f"\nfeatbench run --preset {ctx.preset.name}: {len(ctx.done)} runs, {len(ctx.failed)} failed, "
          f"{elapsed / 60:.1f} min (" + ", ".join(f"{k} {ctx.seconds[k]:.0f}s" for k, _ in ctx.stages) + ")")
    random = [m for m, (w, _) in ctx.wplan.items() if w is not None and WeightsId.parse(w).is_random]
    if random:
        print(f"note: {', '.join(random)} ran with random weights (random init, not "
              "pretrained): a control, not the paper's networks")
    print(f"summary: {ctx.workspace.summary_csv(ctx.dataset)}")
    print(f"report:  {ctx.report} (charts beside it)")


def _left_out_line(wplan):
    """The one line that says which networks were left out and how to get them (or "")."""
    out = left_out(wplan)
    if not out:
        return ""
    return (f"left out: {', '.join(out)} (no pretrained file here: {'; '.join(out.values())}); "
            "'featbench weights fetch NAME' or 'featbench weights import PATH' adds them, "
            "--controls runs them from random:0 as controls")


def _write_run_plan(ctx, controls):
    """Write :data:`RUN_PLAN`: the preset, the weights of each network, what was left out."""
    import json

    plan = {"preset": ctx.preset.name, "controls": bool(controls),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "weights": {m: w for m, (w, _) in ctx.wplan.items() if w is not None},
            "left_out": left_out(ctx.wplan)}
    path = ctx.workspace.results_dir(ctx.dataset) / RUN_PLAN
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=1) + "\n")


def run_pipeline(workspace, *, preset="quick", dataset="synth", root=None, weights=None,
                 protocol=None, controls=False, progress=True, repeats=None, ci=None):
    """Run data → align → extract → classify → ensemble → report, skipping what is done.

    Parameters
    ----------
    workspace : Workspace
    preset : {"quick", "paper"} or Preset
        A name of :data:`PRESETS`, or a :class:`Preset` of your own.
    dataset : str
        Default ``synth`` (generated on first use).
    root : str or Path, optional
        The data set's folder (real data sets).
    weights : str, optional
        Weights for every CNN (``random:0`` runs the preset as a random-weight control);
        default: see the module docstring.
    protocol : str, optional
        Split protocol for the classifiers (their default when None: the paper's 12/6/9).
    controls : bool
        Also run the controls (:meth:`Preset.with_controls`): CNNs without their pretrained
        file from ``random:0``, and the preset's control fine-tuning runs. Flagged as random
        init everywhere; never ensemble members.
    progress : bool
        Print stage headers and progress bars.
    repeats : int, optional
        With a ``kfold:K`` protocol: N repeated splits of the frozen-code runs and their votes
        (module docstring), and the repeats table in the report.
    ci : CISettings, optional
        Intervals and tests (default :func:`featbench.core.stats.current_settings`).

    Returns
    -------
    dict
        ``report`` (Path), ``summary`` (Path), ``runs`` (list of run names), ``failed`` (list
        of (run, error)), ``weights`` ({model: weights}), ``left_out`` ({model: why}),
        ``seconds`` ({stage: s}), ``elapsed``.

    Raises
    ------
    UsageError
        Unknown preset.
    WeightsError
        ``paper`` without cached weights (before any long work).
    """
    if isinstance(preset, Preset):
        spec = preset
    elif preset in PRESETS:
        spec = PRESETS[preset]
    else:
        raise UsageError(did_you_mean(str(preset), PRESETS, what="preset"))
    if controls:
        spec = spec.with_controls()
    t0 = time.perf_counter()
    protocol = protocol or "paper"
    planned = tuple(repeat_protocols(protocol, repeats)) if repeats is not None else ()
    stages = STAGES[:-1] + ((("repeats", _repeat_steps),) if planned else ()) + STAGES[-1:]
    ctx = _Context(workspace, dataset, root, spec, protocol,
                   tag=run_tag(protocol=protocol),  # runs of another protocol carry its tag
                   wplan=resolve_weights(spec, weights, progress=progress),  # files fetched first
                   progress=progress, repeats=planned, stages=stages)
    if _left_out_line(ctx.wplan):
        print(_left_out_line(ctx.wplan), flush=True)  # said even with --quiet: it changes the run
    _write_run_plan(ctx, controls)
    with using_settings(ci or current_settings()):  # every run written stores its intervals so
        for i, (stage, plan) in enumerate(stages, 1):
            _run_stage(ctx, i, stage, plan)
    elapsed = time.perf_counter() - t0
    if progress:
        _print_summary(ctx, elapsed)
    return {"report": ctx.report, "summary": workspace.summary_csv(dataset), "runs": ctx.done,
            "failed": ctx.failed, "left_out": left_out(ctx.wplan),
            "weights": {m: w for m, (w, _) in ctx.wplan.items() if w is not None},
            "seconds": ctx.seconds, "elapsed": elapsed}
