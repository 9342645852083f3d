"""What a run kind's model file must hold, checked once before the run is loaded.

:func:`check_model` is the one validation of a model file beyond its manifest's schema
(:mod:`featbench.core.manifest`, run when the file is opened): the run's kind is known and
allows its task; the kind's own settings pass their schema (types, ranges: each size that
decides an allocation bounded); every tensor group holds exactly the tensors the kind needs,
of the dtypes and shapes it needs (its code dimensions one value across the run, and the
network's when the manifest names a registry network); each group's bytes match the
manifest's sha256; a vote's members pass the same, recursively. Nothing is decoded and no
network is built before: trained networks are checked on PyTorch's ``meta`` device (shapes
without memory). Every failure is one :class:`~featbench.core.manifest.ModelFormatError` line
naming the file.

Each run kind declares what it needs in one :class:`KindSpec` (``RunKind.spec``), made by a
helper of this module from the kind's family:

:func:`estimator_spec`
    per-AU scikit-learn pipelines (``lda``, ``svm``, any :func:`classify.basekinds.estimator_kind`):
    the classes allowed, the fitted arrays each class has and their shapes.
:data:`INTENSITY_SPEC`
    per-AU linear regressors (``ridge``, ``svr``): ``weight`` (d,) and ``bias`` (1,).
:data:`VOTE_SPEC`
    a vote (``vote``): ``scales`` (members, AUs); its members checked as runs of their own.
:data:`LSTM_SPEC`
    the LSTM's units: shapes from each unit's ``dims``, ``hidden``, ``n_out``, ``bidirectional``.
:func:`network_spec`
    a method over faces (``ft``, ``transfer``): each unit's network rebuilt on the meta device
    from the manifest, its state dict compared with the file's tensors.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from featbench.core.aus import AU_REGION
from featbench.core.errors import FeatbenchError, UsageError
from featbench.core.manifest import ModelFormatError, Tensor, check_symbol, match_tensors
from featbench.core.modellimits import FLOATS, MAX_DIMS, NUMBERS


@dataclass(frozen=True)
class KindSpec:
    """What a run kind's model file must hold.

    Attributes
    ----------
    tensors : callable
        ``tensors(model_file, settings, bound)`` -> ``{group: {name: Tensor}}`` for every
        group the run holds (``settings``: the kind's settings, validated by ``schema``;
        ``bound``: symbols such as ``d:<region>``, the code dimensions of a region's codes).
        It raises ModelFormatError for anything its kind cannot load.
    schema : str
        The name of the pydantic model of the manifest's ``settings`` (:func:`_schemas`).
    tasks : tuple of str
        The tasks a run of this kind may have (empty: any registered task).
    extra_groups : tuple of str
        Groups the kind writes but never loads (transfer's ``backbone``): any tensors.
    checks : callable, optional
        ``checks(model_file, settings)``: what else ties the run together (a vote's members).
    """

    tensors: Callable
    schema: str
    tasks: tuple = ()
    extra_groups: tuple = ()
    checks: Optional[Callable] = None


# --- the one check ----------------------------------------------------------------------------
def check_model(model_file):
    """Validate an opened model file fully, before anything of it is used (see the module).

    Raises
    ------
    ModelFormatError, StoreError, MissingRunError
        One line naming the file and what is wrong.
    """
    from classify.kinds import get_kind, list_kinds

    m, where = model_file.manifest, model_file.where
    try:
        kind = get_kind(m["kind"])
    except UsageError:
        raise UsageError(f"{where}: a run of kind {m['kind']!r}, which this featbench does "
                         f"not know (it knows {', '.join(list_kinds())})") from None
    _check_identity(model_file, kind)
    spec = getattr(kind, "spec", None)
    bound = {}
    if spec is not None:
        # the tasks a kind learns are the kind's to say (RunKind.tasks; None: any task)
        if kind.tasks is not None and m["task"] not in kind.tasks:
            raise ModelFormatError(f"{where}: invalid model manifest: task {m['task']!r} on a run "
                                   f"of kind {kind.name}, whose runs are of task "
                                   f"{' or '.join(kind.tasks)}")
        settings = _validate(spec.schema, m["settings"], where)
        want = spec.tensors(model_file, settings, bound)
        extra = [g for g in model_file.groups if g not in want and g not in spec.extra_groups]
        if extra:
            raise ModelFormatError(f"{where}: tensor group {extra[0]!r} is not one its "
                                   f"{kind.name} run uses (it uses {', '.join(want) or 'none'})")
        for group, tensors in want.items():
            match_tensors(where, group, model_file.headers(group), tensors, bound)
        for group in spec.extra_groups:
            if group in model_file.groups:
                model_file.headers(group)
        _check_code_dims(model_file, bound)
        if spec.checks is not None:
            spec.checks(model_file, settings)
    model_file.verify()
    for member in model_file.members():
        check_model(member)
    return model_file


def _check_identity(model_file, kind):
    """The run's name is a run name, and the weights identity of a run that reads a network is
    one predict can resolve (a random seed a whole number, a digest 64 hex digits)."""
    import re

    from featbench.core.identity import RunKey, WeightsId

    m, where = model_file.manifest, model_file.where
    try:
        RunKey.parse(m["run"])
    except UsageError as exc:
        raise ModelFormatError(f"{where}: invalid model manifest: run: {exc}") from None
    if kind.inputs == "runs":
        return  # a vote's weights column lists its members' (each checked as its own run)
    wid = WeightsId.parse(m["weights"])
    if (wid.kind == "random" and not (isinstance(wid.seed, int) and 0 <= wid.seed < 2 ** 63)) \
            or (wid.sha256 and not re.fullmatch(r"[0-9a-f]{64}", wid.sha256)):
        raise ModelFormatError(f"{where}: invalid model manifest: weights {m['weights'][:80]!r} is "
                               "not a weights identity (random:<seed>, <name> sha256:<64 hex>...)")


def _check_code_dims(model_file, bound):
    """A codes run's dimensions are its registry network's (when the manifest names one)."""
    dims = {k: v for k, v in bound.items() if k.startswith("d:")}
    model = (model_file.manifest.get("preprocessing") or {}).get("model") or ""
    if not dims or not model:
        return
    from extract.registry import get_spec

    try:
        want = int(get_spec(model).dims)
    except (FeatbenchError, ImportError, ValueError):
        return  # not a network of this featbench's registry: predict names it when it needs it
    for key, d in dims.items():
        if d != want:
            raise ModelFormatError(f"{model_file.where}: the run's classifiers read {d}-d codes "
                                   f"of {model} ({key[2:]}), whose codes are {want}-d: not a run "
                                   "of this network's codes (damaged or edited manifest)")


def _validate(name, value, where):
    from pydantic import ValidationError

    from featbench.core.manifest import _first_error

    try:
        return _schemas()[name].model_validate(value)
    except ValidationError as exc:
        raise ModelFormatError(f"{where}: invalid model manifest: settings."
                               f"{_first_error(exc)}") from None


def _schemas():
    """The pydantic models of the kinds' settings (:mod:`classify._kindschemas`, imported now)."""
    from classify._kindschemas import SCHEMAS

    return SCHEMAS


# --- per-AU units of a classify run ---------------------------------------------------------------
def _per_au_groups(model_file, units):
    """``{group: (fold index, au)}`` of a classify run's ``units`` ([{au: group}] per fold): a
    group is its own AU's (``AU01``, ``AU01-<fold>``), each fold's threshold is there."""
    from classify.kinds import unit_group

    m, where = model_file.manifest, model_file.where
    folds = m["folds"]
    if len(units) != len(folds):
        raise ModelFormatError(f"{where}: invalid model manifest: settings.units has "
                               f"{len(units)} folds, the run {len(folds)}")
    out = {}
    for fi, per in enumerate(units):
        for au, group in per.items():
            want = unit_group(au, folds[fi]["name"], len(folds))
            if au not in m["aus"] or au not in folds[fi]["thresholds"]:
                raise ModelFormatError(f"{where}: invalid model manifest: settings.units.{fi}: "
                                       f"{au} has no threshold in fold {folds[fi]['name']}")
            if group != want:
                raise ModelFormatError(f"{where}: invalid model manifest: settings.units.{fi}."
                                       f"{au} is {group!r}, not {want!r}: an AU reads only its "
                                       "own tensors")
            _region(model_file, au)
            out[group] = (fi, au)
    return out


def _region(model_file, au):
    """The region whose codes ``au``'s classifier reads (the manifest must say)."""
    regions = model_file.manifest["preprocessing"].get("regions") or {}
    if au not in regions:
        raise ModelFormatError(f"{model_file.where}: invalid model manifest: "
                               f"preprocessing.regions does not say which codes {au} reads")
    return regions[au]


def _intensity_tensors(model_file, settings, bound):
    out = {}
    for group, (_, au) in _per_au_groups(model_file, settings.units).items():
        d = f"d:{_region(model_file, au)}"
        out[group] = {"weight": Tensor((d,)), "bias": Tensor((1,))}
    return out


#: ``ridge`` / ``svr``: one weight vector and bias per AU (and fold), intensity runs only
INTENSITY_SPEC = KindSpec(tensors=_intensity_tensors, schema="intensity", tasks=("intensity",))


# --- scikit-learn pipelines ----------------------------------------------------------------------
def estimator_spec(classes, arrays):
    """The :class:`KindSpec` of per-AU pipelines of ``classes`` (occurrence runs).

    ``arrays``: ``{class name: {fitted attribute: shape}}``, the arrays each class's fitted
    state holds (``"d"``: the code dimension; other strings: free sides); a class it does not
    list may hold arrays of any shape whose names follow scikit-learn's fitted convention.
    """
    return KindSpec(tensors=lambda mf, s, b: _estimator_tensors(mf, s, b, classes, arrays),
                    schema="estimators", tasks=("occurrence",))


def _estimator_tensors(model_file, settings, bound, classes, arrays):
    allowed = {c.__name__: c for c in classes}
    out = {}
    for group, (_, au) in _per_au_groups(model_file, settings.units).items():
        desc = settings.models.get(group)
        if desc is None:
            raise ModelFormatError(f"{model_file.where}: invalid model manifest: settings.models "
                                   f"has no {group!r}")
        if not desc.pipeline and len(desc.steps) != 1:
            raise ModelFormatError(f"{model_file.where}: invalid model manifest: settings.models."
                                   f"{group}: one step unless it is a pipeline")
        d, want = f"d:{_region(model_file, au)}", {}
        for step in desc.steps:
            want.update(_step_tensors(model_file, group, step, allowed, arrays, d, bound))
        out[group] = want
    return out


def _step_tensors(model_file, group, step, allowed, arrays, d, bound):
    """The tensors one pipeline step holds; its class, parameters and fitted scalars checked."""
    where, what = model_file.where, f"settings.models.{group}.{step.step}"
    cls = allowed.get(step.cls)
    if cls is None:
        raise ModelFormatError(f"{where}: {what}: a saved step of class {step.cls!r}, which this "
                               f"kind does not load (it loads {', '.join(sorted(allowed))})")
    unknown = sorted(set(step.params) - _init_params(cls))
    if unknown:
        raise ModelFormatError(f"{where}: invalid model manifest: {what}.params: {cls.__name__} "
                               f"has no parameter {unknown[0]!r}")
    for key, value in step.fitted.items():
        _not_shadowing(where, what, cls, key)
        if key == "n_features_in_":
            check_symbol(where, d, value, bound, what=f"{what}.fitted.n_features_in_",
                         limit=MAX_DIMS)
    shapes = arrays.get(cls.__name__)
    have = [k for k in model_file.headers(group) if k.startswith(f"{step.step}.")]
    want = {}
    for name in have if shapes is None else []:
        _not_shadowing(where, f"tensor {group}/{name}", cls, name.partition(".")[2])
        want[name] = Tensor(None, NUMBERS)
    for attr, (shape, required) in (shapes or {}).items():
        shape = tuple(d if s == "d" else (f"{group}:{s}" if isinstance(s, str) else s)
                      for s in shape)
        if isinstance(required, str):  # needed when the step's parameter says so (with_mean)
            required = step.params.get(required, True) is True
        want[f"{step.step}.{attr}"] = Tensor(shape, NUMBERS, required=required)
    return want


def _init_params(cls):
    """The names ``cls(...)`` takes (scikit-learn's parameters), read without making one."""
    import inspect

    return {name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _not_shadowing(where, what, cls, key):
    import re

    from classify._kindschemas import FITTED_PATTERN

    if not re.match(FITTED_PATTERN, key) or hasattr(cls, key):
        raise ModelFormatError(f"{where}: invalid model manifest: {what}: {key!r} is not a fitted "
                               f"attribute of {cls.__name__} (it would replace one of its own)")


# --- votes ------------------------------------------------------------------------------------------
def _vote_tensors(model_file, settings, bound):
    m = model_file.manifest
    runs = [mm["run"] for mm in m.get("members") or []]
    if not runs or settings.members != runs:
        raise ModelFormatError(f"{model_file.where}: invalid model manifest: settings.members "
                               f"{settings.members} are not the vote's members {runs}")
    if settings.fingerprints and len(settings.fingerprints) != len(runs):
        raise ModelFormatError(f"{model_file.where}: invalid model manifest: "
                               "settings.fingerprints: one per member")
    if m["folds"]:
        raise ModelFormatError(f"{model_file.where}: invalid model manifest: a vote has no folds")
    return {"vote": {"scales": Tensor((len(runs), len(m["aus"])))}}


def _vote_members(model_file, settings):
    m = model_file.manifest
    for member in model_file.members():
        mm = member.manifest
        missing = [a for a in m["aus"] if a not in mm["aus"]]
        if missing or mm["task"] != m["task"]:
            raise ModelFormatError(
                f"{model_file.where}: member {mm['run']} " + (
                    f"has no {missing[0]}" if missing else f"is a run of task {mm['task']}, the "
                    f"vote of task {m['task']}") + ": run featbench ensemble again")


#: ``vote``: the members' score scales; the members' AUs and task the vote's
VOTE_SPEC = KindSpec(tensors=_vote_tensors, schema="vote", checks=_vote_members)


# --- learned units --------------------------------------------------------------------------------
def _learned_units(model_file, units):
    """The units of a learned run that hold a network (``{group: unit}``), each on its own AUs:
    its fold one of the run's, its AUs the run's, an AU-named unit on that AU alone, no AU of
    a fold in two units."""
    m, where = model_file.manifest, model_file.where
    out, seen = {}, set()
    for name, unit in units.items():
        if name not in model_file.groups:
            continue  # a unit the run trained no network for
        base = unit.base or name
        if unit.fold >= len(m["folds"]) or (name != base and not name.startswith(base + "-")):
            raise ModelFormatError(f"{where}: invalid model manifest: settings.units.{name}: its "
                                   f"fold {unit.fold} or base {base!r} is not the run's")
        if set(unit.aus) - set(m["aus"]) or set(unit.trainable or ()) - set(unit.aus):
            raise ModelFormatError(f"{where}: invalid model manifest: settings.units.{name}: AUs "
                                   f"{unit.aus} are not the run's {m['aus']}")
        if base in AU_REGION and list(unit.aus) != [base]:
            raise ModelFormatError(f"{where}: invalid model manifest: settings.units.{name}: the "
                                   f"unit of {base} lists {unit.aus}: an AU reads only its own "
                                   "tensors")
        for au in unit.trainable or unit.aus:
            if (unit.fold, au) in seen:
                raise ModelFormatError(f"{where}: invalid model manifest: {au} is in two units "
                                       f"of fold {unit.fold}")
            seen.add((unit.fold, au))
        out[name] = unit
    return out


def _lstm_tensors(model_file, settings, bound):
    out = {}
    for name, u in _learned_units(model_file, settings.units).items():
        where = model_file.where
        if u.n_out != len(u.aus):
            raise ModelFormatError(f"{where}: invalid model manifest: settings.units.{name}: "
                                   f"n_out {u.n_out} for {len(u.aus)} AUs")
        wrong = [a for a in u.trainable or u.aus if _region(model_file, a) != u.region]
        if wrong:
            raise ModelFormatError(f"{where}: invalid model manifest: {wrong[0]} reads "
                                   f"{_region(model_file, wrong[0])} codes, its unit {name} was "
                                   f"trained on {u.region} codes")
        d = check_symbol(where, f"d:{u.region}", u.dims, bound, what=f"settings.units.{name}.dims",
                         limit=MAX_DIMS)
        h, dirs = u.hidden, 2 if u.bidirectional else 1
        want = {"mean": Tensor((d,)), "std": Tensor((d,)), "head.weight": Tensor((u.n_out, h * dirs)),
                "head.bias": Tensor((u.n_out,))}
        for suffix in ("", "_reverse")[:dirs]:
            want.update({f"lstm.weight_ih_l0{suffix}": Tensor((4 * h, d)),
                         f"lstm.weight_hh_l0{suffix}": Tensor((4 * h, h)),
                         f"lstm.bias_ih_l0{suffix}": Tensor((4 * h,)),
                         f"lstm.bias_hh_l0{suffix}": Tensor((4 * h,))})
        out[name] = want
    return out


#: ``lstm``: one LSTM per unit, its shapes from the unit's dims, hidden units and outputs
LSTM_SPEC = KindSpec(tensors=_lstm_tensors, schema="lstm")


def network_spec(network, schema, *, values=(), extra_groups=()):
    """The :class:`KindSpec` of a method over faces: each unit's network (``network(settings,
    unit, state)``: the kind's builder, :mod:`classify.netkinds`) rebuilt on PyTorch's meta
    device with the file's tensors as its state, so every name and shape is compared with the
    network the manifest describes without allocating it; ``values``: tensors the build reads
    (given as zeros)."""
    return KindSpec(tensors=lambda mf, s, b: _network_tensors(mf, s, network, values),
                    schema=schema, extra_groups=tuple(extra_groups))


#: what a network's tensors may be: floating parameters, integer step counters
_INT_BUFFER = "num_batches_tracked"


def _network_tensors(model_file, settings, network, values):
    m, where = model_file.manifest, model_file.where
    units = _learned_units(model_file, settings.units)
    plain = {**m["settings"], "aus": list(m["aus"]), "weights": m["weights"]}
    out = {}
    for name, unit in units.items():
        if (unit.base or name) not in settings.face_input:
            raise ModelFormatError(f"{where}: invalid model manifest: settings.face_input has no "
                                   f"{unit.base or name!r}")
        entries = model_file.headers(name)
        out[name] = {k: Tensor(None, frozenset({"I64", "I32"}) if k.endswith(_INT_BUFFER)
                               else FLOATS) for k in entries}
        _build_on_meta(where, name, entries, lambda state: network(plain, name, state), values)
    return out


_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _build_on_meta(where, group, entries, build, values):
    """``build(state)`` on the meta device with the file's tensors' shapes; its refusal of the
    state (a missing or unexpected tensor, a shape the network does not have) is one line."""
    import torch

    state = {}
    for name, e in entries.items():
        dtype = getattr(torch, _TORCH_DTYPES.get(e.dtype, "float32"))
        state[name] = (torch.zeros(e.shape, dtype=dtype, device="cpu") if name in values
                       else torch.empty(e.shape, dtype=dtype, device="meta"))
    try:
        with torch.device("meta"):
            build(state)
    except FeatbenchError as exc:
        raise ModelFormatError(f"{where}: tensor group {group}: the network its manifest "
                               f"describes cannot be built ({str(exc).splitlines()[0][:200]})") from None
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            NotImplementedError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 and "Error(s) in loading" in lines[0]
                  else (lines or [type(exc).__name__])[0])
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise ModelFormatError(f"{where}: tensor group {group} does not fit the network its "
                               f"manifest describes ({detail})") from None


__all__ = ["KindSpec", "check_model", "estimator_spec", "INTENSITY_SPEC", "VOTE_SPEC",
           "LSTM_SPEC", "network_spec"]
