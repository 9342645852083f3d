"""``featbench run``: the whole frozen-feature protocol of Method A in one call.

Stages, each skipped when its output is already there:

1. data      the synthetic set is generated when its folder does not exist (real sets: --root)
2. align     the aligned-face cache (no-op when it matches the frame table)
3. extract   one feature file per network (a complete file is reused; a partial one resumes)
4. classify  per-AU classifiers per network / region / classifier (a run whose CSV and
             predictions are newer than its features and that did not fail is kept)
5. ensemble  the paper's majority-vote presets
6. report    ``results/<dataset>/report.md`` and its charts

Presets
-------
``quick`` (default; under 10 minutes on 2 CPU cores from an empty workspace)
    networks ``hog``, ``dlib_face``, ``alexnet``, ``cnn_f``; classifiers ``svm`` and ``lda`` on
    full faces; region-based (``auto``: each AU's classifier sees its region) SVM and LDA runs for
    ``hog`` and ``alexnet``; ensembles ``fe`` and ``fe+region``. CNNs use their ``imagenet``
    weights when these are cached here, else ``random:0`` (said in the output and the report).
``paper``
    every network of the paper (AlexNet, ZFNet, CNN-F/M/S, VGG-16, VGG-Face, GoogLeNet,
    ResNet-50, ResNet-152) with ``imagenet`` weights, SVM and LDA on full faces, region-based
    runs for VGG-Face and CNN-F, ensembles ``fe`` and ``fe+region``. Missing weight files stop
    the run before any long work, naming every file; ``weights="random:0"`` runs the whole
    preset as a random-weight control. ZFNet has no published weights and always runs as a
    random-init control.
"""

import time
from dataclasses import dataclass

from .errors import FeatbenchError, UsageError, WeightsError, did_you_mean


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
        Ensemble presets (:data:`featbench.ensemble.PRESETS`).
    """

    name: str
    models: tuple
    region_models: tuple
    clfs: tuple = ("svm", "lda")
    region_clfs: tuple = ("svm", "lda")
    ensembles: tuple = ("fe", "fe+region")
    #: fall back to random:0 for a CNN whose imagenet weights are not cached (quick) or refuse (paper)
    random_fallback: bool = False


PRESETS = {
    # region runs use alexnet, not cnn_f: on 2 CPU cores its codes cost about half (40 vs 75 s
    # per region of the 3239-frame synth set), and the quick preset has a 10-minute budget
    "quick": Preset("quick", models=("hog", "dlib_face", "alexnet", "cnn_f"),
                    region_models=("hog", "alexnet"), random_fallback=True),
    "paper": Preset("paper", models=("alexnet", "zfnet", "cnn_f", "cnn_m", "cnn_s", "vgg16",
                                     "vgg_face", "googlenet", "resnet50", "resnet152"),
                    region_models=("vgg_face", "cnn_f")),
}


def _say(progress, text):
    if progress:
        print(text, flush=True)


def resolve_weights(preset, weights=None):
    """Return ``{model: (weights, note)}`` for the preset's networks, checking files first.

    Parameters
    ----------
    preset : Preset
    weights : str, optional
        ``imagenet``, ``random[:SEED]`` or a file, for every CNN; default: the preset's rule
        (quick: imagenet when cached, else random:0; paper: imagenet).

    Raises
    ------
    WeightsError
        Pretrained weights requested and not cached: names every missing file and the folder.
    """
    from extract.registry import get_spec
    from extract.weights import pretrained_path

    plan, missing = {}, []
    for model in dict.fromkeys(preset.models + preset.region_models):
        spec = get_spec(model)
        if spec.kind != "torch" or spec.pretrained == "dlib":  # hog; dlib (shipped)
            plan[model] = (spec.default_weights, "")
            continue
        if weights is not None:
            plan[model] = (weights, "random init, not pretrained" if "random" in weights else "")
            continue
        if not spec.pretrained:  # zfnet: no loadable pretrained weights were ever published
            plan[model] = (spec.default_weights, "no published weights: random init control")
            continue
        path, cached = pretrained_path(spec)
        if cached:
            plan[model] = ("imagenet", f"pretrained ({path.name} cached)")
        elif preset.random_fallback:
            plan[model] = ("random:0", f"random init, not pretrained ({path.name} not cached)")
        else:
            missing.append(path)
            plan[model] = ("imagenet", "")
    if missing:
        folder = missing[0].parent
        raise WeightsError(
            f"the {preset.name} preset needs pretrained weights that are not cached: "
            + ", ".join(p.name for p in missing) + f" (put them in {folder}; "
            "or run the preset as a random-weight control with --weights random:0)")
    return plan


def plan_runs(preset):
    """Return the classifier runs of ``preset`` as (model, region, clf) tuples."""
    runs = [(m, "full", c) for m in preset.models for c in preset.clfs]
    runs += [(m, "auto", c) for m in preset.region_models for c in preset.region_clfs]
    return runs


def _run_is_fresh(workspace, dataset, run, features):
    """A run is kept when its CSV and predictions exist, are newer than its features and it did not fail."""
    csv = workspace.run_csv(dataset, run)
    pred = workspace.predictions_path(dataset, run)
    if not (csv.exists() and pred.exists() and features.exists()):
        return False
    if min(csv.stat().st_mtime, pred.stat().st_mtime) < features.stat().st_mtime:
        return False
    from .results import read_summary_rows

    summary = workspace.summary_csv(dataset)
    rows = [r for r in read_summary_rows(summary) if r["run"] == run] if summary.exists() else []
    return bool(rows) and not rows[0].get("error")


def run_pipeline(workspace, *, preset="quick", dataset="synth", root=None, weights=None,
                 protocol=None, progress=True):
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
    progress : bool
        Print stage headers and progress bars.

    Returns
    -------
    dict
        ``report`` (Path), ``summary`` (Path), ``runs`` (list of run names), ``failed`` (list
        of (run, error)), ``weights`` ({model: weights}), ``seconds`` ({stage: s}), ``elapsed``.

    Raises
    ------
    UsageError
        Unknown preset.
    WeightsError
        ``paper`` without cached weights (before any long work).
    """
    from .datasets import load_dataset
    from .results import record_failure
    from .workspace import run_name

    if isinstance(preset, Preset):
        spec = preset
    elif preset in PRESETS:
        spec = PRESETS[preset]
    else:
        raise UsageError(did_you_mean(str(preset), PRESETS, what="preset"))
    t0 = time.perf_counter()
    seconds = {}
    failed = []
    wplan = resolve_weights(spec, weights)  # before any long work: missing files fail fast
    runs = plan_runs(spec)
    from classify.run import classify_run, run_tag

    tag = run_tag(protocol=protocol or "paper")  # runs of another protocol carry its tag
    stages = 6

    def stage(i, name, detail=""):
        _say(progress, f"\n== [{i}/{stages}] {name}{': ' + detail if detail else ''} ==")
        return time.perf_counter()

    # 1. data ------------------------------------------------------------------------------
    t = stage(1, "data", dataset)
    table = load_dataset(dataset, root=root, workspace=workspace, progress=progress)
    labelled = int(table.labelled_mask().sum())
    _say(progress, f"{dataset}: {len(table.frames)} frames, {len(table.subjects)} subjects, "
                   f"{labelled} labelled, AUs {', '.join(table.aus)}")
    seconds["data"] = time.perf_counter() - t

    # 2. align -----------------------------------------------------------------------------
    t = stage(2, "align")
    from .align import ensure_aligned

    aligned = ensure_aligned(table, workspace, progress=progress)
    _say(progress, f"aligned faces: {aligned}")
    seconds["align"] = time.perf_counter() - t

    # 3. extract ---------------------------------------------------------------------------
    models = list(dict.fromkeys(spec.models + spec.region_models))
    t = stage(3, "extract", f"{len(models)} networks")
    from extract.extractor import extract_features

    for model in models:
        w, note = wplan[model]
        region = "all" if model in spec.region_models else "full"
        _say(progress, f"- {model} (weights {w}{'; ' + note if note else ''}; regions {region})")
        try:
            tm = time.perf_counter()
            extract_features(table, workspace, model, region=region, weights=w,
                             progress=progress)
            seconds[f"extract {model}"] = time.perf_counter() - tm
        except FeatbenchError as exc:
            _say(progress, f"  failed: {exc}")
            for m, r, c in runs:
                if m == model:
                    name = run_name(m, r, c, tag=tag)
                    record_failure(workspace, dataset, name, f"extract {model}: {exc}",
                                   meta={"model": m, "region": r, "clf": c, "weights": w})
                    failed.append((name, str(exc)))
    seconds["extract"] = time.perf_counter() - t

    # 4. classify --------------------------------------------------------------------------
    t = stage(4, "classify", f"{len(runs)} runs")
    done = []
    for model, region, clf in runs:
        name = run_name(model, region, clf, tag=tag)
        if any(name == f for f, _ in failed):
            continue
        features = workspace.features_path(dataset, model)
        if _run_is_fresh(workspace, dataset, name, features):
            _say(progress, f"- {name}: up to date, kept")
            done.append(name)
            continue
        tm = time.perf_counter()
        try:
            out = classify_run(workspace, dataset, model=model, clf=clf, region=region,
                               protocol=protocol or "paper", table=table, progress=progress)
        except Exception as exc:  # noqa: BLE001 - one broken run must not stop the others
            # a FeatbenchError is bad input; anything else is a bug, kept with its type so the
            # report's failed-runs table says what to fix, and the other runs go on
            if not isinstance(exc, FeatbenchError):
                exc = f"{type(exc).__name__}: {exc}"
            _say(progress, f"- {name}: failed: {exc}")
            record_failure(workspace, dataset, name, exc,
                           meta={"model": model, "region": region, "clf": clf,
                                 "weights": wplan[model][0]})
            failed.append((name, str(exc)))
            continue
        seconds[f"classify {name}"] = time.perf_counter() - tm
        f1 = out.get("mean", {}).get("f1", float("nan"))
        _say(progress, f"- {name}: mean F1 {f1:.3f} ({seconds[f'classify {name}']:.0f}s)")
        done.append(name)
    seconds["classify"] = time.perf_counter() - t

    # 5. ensemble --------------------------------------------------------------------------
    t = stage(5, "ensemble", ", ".join(spec.ensembles))
    from .ensemble import ensemble_run

    for ens in spec.ensembles:
        try:
            out = ensemble_run(workspace, dataset, preset=ens, tag=tag)
        except FeatbenchError as exc:
            name = run_name(f"ensemble-{ens}", "mixed", "vote", tag=tag)
            _say(progress, f"- ensemble {ens}: failed: {exc}")
            record_failure(workspace, dataset, name, exc,
                           meta={"model": f"ensemble-{ens}", "region": "mixed", "clf": "vote"})
            failed.append((name, str(exc)))
            continue
        for note in out["notes"]:
            _say(progress, f"  note: {note}")
        _say(progress, f"- {out['run']} = vote of {', '.join(out['members'])}: "
                       f"mean F1 {out['mean_f1']:.3f}")
        done.append(out["run"])
    seconds["ensemble"] = time.perf_counter() - t

    # 6. report ----------------------------------------------------------------------------
    t = stage(6, "report")
    from .report import headline, make_report

    report = make_report(workspace, dataset)
    seconds["report"] = time.perf_counter() - t
    elapsed = time.perf_counter() - t0
    if progress:
        print("\n" + headline(workspace, dataset))
        print(f"\nfeatbench run --preset {spec.name}: {len(done)} runs, {len(failed)} failed, "
              f"{elapsed / 60:.1f} min "
              f"(" + ", ".join(f"{k} {seconds[k]:.0f}s" for k in
                               ("data", "align", "extract", "classify", "ensemble", "report"))
              + ")")
        random = [m for m, (w, _) in wplan.items() if "random" in str(w)]
        if random:
            print(f"note: {', '.join(random)} ran with random weights (random init, not "
                  "pretrained): a control, not the paper's networks")
        print(f"summary: {workspace.summary_csv(dataset)}")
        print(f"report:  {report} (charts beside it)")
    return {"report": report, "summary": workspace.summary_csv(dataset), "runs": done,
            "failed": failed, "weights": {m: w for m, (w, _) in wplan.items()},
            "seconds": seconds, "elapsed": elapsed}
