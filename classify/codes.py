"""Codes in a feature file, read for a run: found, checked, loaded (or left in the file), joined.

What every run on codes reads through (:class:`classify.driver.CodeInputs`), below the run's
plan and driver: :func:`check_features` (the file of a network's codes, or an error that names
the ``featbench extract`` command that makes it), :func:`load_codes`, :func:`read_run_codes`
(codes over the memory budget stay in the file), :func:`join_codes` (a table row's row of
codes) and :func:`model_preprocessing` (what a saved model says of its codes).
"""

import json

import numpy as np

from featbench.core.aus import AU_REGION
from featbench.core.errors import FeatbenchError, MissingRunError, StoreError, UsageError
from featbench.core.frames import KEY_DTYPE

from classify.plan import REGION_CHOICES
from classify.scale import codes_bytes, memory_budget_bytes
from extract.store import check_source, read_codes, store_info


# --- codes -------------------------------------------------------------------------------------
def feature_info(path):
    """Return ``extract.store.store_info(path)``: attrs (model, weights...) and regions."""
    try:
        return store_info(path)
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 feature file ({exc})") from None


def check_features(workspace, dataset, model, regions=("full",), table=None):
    """Return the feature file of ``model``; MissingRunError naming the extract command if absent.

    With ``table``, codes made from other aligned faces than its inputs give now are refused
    (:func:`extract.store.check_source`), as ``extract`` refuses to reuse them.
    """
    path = workspace.features_path(dataset, model)
    if table is not None and path.exists():
        check_source(path, table, workspace.aligned_path(dataset))
    if not path.exists():
        from extract.registry import get_spec

        get_spec(model)  # an unknown name says so, with the closest one, before "not extracted"
        have = sorted(p.stem for p in path.parent.glob("*.h5")) if path.parent.exists() else []
        raise MissingRunError(
            f"{path}: no codes of model {model!r} for {dataset} (make them with: featbench extract "
            f"--model {model} --dataset {dataset}"
            f"{' --region all' if len(regions) > 1 or regions[0] != 'full' else ''})"
            + (f"; codes exist for: {', '.join(have)}" if have else ""))
    return path


def check_finetuned_codes(workspace, dataset, path, splits):
    """Refuse codes of a network fine-tuned on subjects that ``splits`` test (or say it cannot).

    A feature file whose weights are ``finetuned:<run>`` holds codes of the network the
    fine-tuning run ``<run>`` trained; the folds its settings.json records
    (``results/<dataset>/models/<run>/settings.json``) say which subjects it trained and
    validated on. A classifier tested on one of them would score faces the network learned, so
    this is refused before anything is trained or written. A network whose record is not in the
    workspace (imported, or fine-tuned on another data set) cannot be checked: a warning on
    stderr says so, and the run goes on.

    Parameters
    ----------
    splits : sequence of Split, or a callable that returns them
        The new run's folds; a callable is called only for codes of a fine-tuned network, so
        that a protocol that does not fit the data set is said after the file's own problems.

    Raises
    ------
    UsageError
        Some subject that trained or validated the network is a test subject of ``splits``.
    """
    import sys

    from featbench.core.identity import WeightsId
    from featbench.core.splits import trained_test_subjects

    try:
        weights = WeightsId.parse(feature_info(path)["attrs"].get("weights", ""))
    except FeatbenchError:
        return  # a damaged file: said by the run's reading of it, as its failure
    if weights.kind != "finetuned":
        return
    splits = splits() if callable(splits) else splits
    record = workspace.models_dir(dataset, weights.name) / "settings.json"
    try:
        folds = json.loads(record.read_text())["folds"]
        shared = trained_test_subjects(folds, splits)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        print(f"featbench: warning: {path}: codes of a network fine-tuned by {weights.name}, whose "
              f"record ({record}) is not here: which subjects trained it is not checked",
              file=sys.stderr)
        return
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        raise UsageError(
            f"{path}: codes of the network fine-tuned by {weights.name}, which trained on "
            f"{len(shared)} of this protocol's test subjects ({', '.join(shared[:3])}{more}): "
            "classify them with the protocol it was fine-tuned under")


def load_codes(workspace, dataset, model, regions, *, lazy=False):
    """Return ``(keys, {region: codes}, attrs)`` of the feature file of ``model``.

    With ``lazy``, the codes stay in the file: ``{region: classify.scale.H5Codes}``.

    Raises
    ------
    MissingRunError
        No feature file, or it lacks a region: the message names the ``featbench extract``
        command that makes it.
    """
    path = check_features(workspace, dataset, model, regions)
    present = [r for r in feature_info(path)["regions"] if r in REGION_CHOICES]
    missing = [r for r in regions if r not in present]
    if missing:
        flag = "all" if len(regions) > 1 else missing[0]
        raise MissingRunError(f"{path} has no codes for region {', '.join(missing)} "
                              f"(it has {', '.join(present) or 'none'}; make them with: "
                              f"featbench extract --model {model} --dataset {dataset} --region {flag})")
    if lazy:
        from classify.scale import keys_and_attrs, lazy_codes

        codes = lazy_codes(path, regions)
        keys, attrs = keys_and_attrs(path)
        for r, c in codes.items():
            if len(c) != len(keys):
                raise StoreError(f"{path}: /{r}/codes has {len(c)} rows but /frames has {len(keys)}")
        return keys, codes, attrs
    keys, codes, attrs = None, {}, {}
    for r in regions:
        k, c, attrs = read_codes(path, r)
        if keys is None:
            keys = np.asarray(k).astype(KEY_DTYPE)
        if len(c) != len(keys):
            raise StoreError(f"{path}: /{r}/codes has {len(c)} rows but /frames has {len(keys)}")
        codes[r] = c
    return keys, codes, attrs


def default_model(workspace, dataset):
    """Return the only model with codes for ``dataset``; else a UsageError listing them."""
    folder = workspace.features_path(dataset, "x").parent
    have = sorted(p.stem for p in folder.glob("*.h5")) if folder.exists() else []
    if len(have) == 1:
        from extract.store import store_info

        try:  # the registry name (timm:x), which the file name spells timm-x
            return str(store_info(folder / f"{have[0]}.h5")["attrs"].get("model", have[0]))
        except OSError:
            return have[0]
    if not have:
        raise MissingRunError(f"no codes for {dataset} yet in {folder} (make them with: "
                              f"featbench extract --model NAME --dataset {dataset})")
    raise UsageError(f"pass --model: codes of several networks exist for {dataset} ({', '.join(have)})")


def join_codes(table, keys):
    """Return, per table row, the row of its codes in ``keys``, or -1 when it has none.

    Parameters
    ----------
    table : FrameTable
    keys : structured array of KEY_DTYPE, shape (n_codes,)

    Returns
    -------
    array of shape (len(table),) int64
    """
    import pandas as pd

    def index(k):
        return pd.MultiIndex.from_arrays([k["subject"], k["video"], k["frame"].astype(np.int64)])

    code_index = index(keys)
    if code_index.has_duplicates:
        raise StoreError("the feature file lists some frames twice in /frames")
    return code_index.get_indexer(index(table.keys())).astype(np.int64)


def read_run_codes(workspace, dataset, model, regions, path, *, lazy_ok=True):
    """Return ``(keys, codes, attrs, memory budget)``; with ``lazy_ok``, codes over the budget
    stay on disk (read in blocks: :class:`classify.scale.H5Codes`)."""
    budget = memory_budget_bytes()
    lazy = lazy_ok and codes_bytes(path, regions) > budget
    return (*load_codes(workspace, dataset, model, regions, lazy=lazy), budget)


def plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def model_preprocessing(meta, attrs, au_list):
    """The manifest's ``preprocessing`` of a run on a feature file's codes (``attrs``: its attributes)."""
    prep = attrs.get("preprocessing")
    prep = json.loads(prep) if isinstance(prep, str) else dict(prep or {})
    region = meta["region"]
    return {"model": str(attrs.get("model") or meta["model"]), "layer": plain(attrs.get("layer")),
            "input_size": plain(attrs.get("input_size")),
            "regions": {a: AU_REGION[a] if region == "auto" else region for a in au_list},
            **{k: plain(prep[k]) for k in ("mean", "std", "pixel_scale") if k in prep},
            "alignment": prep.get("aligned_settings") or {},
            "calibrate": meta.get("calibrate") or "none"}  # per person, as predict must too
