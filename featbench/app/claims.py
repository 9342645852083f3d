"""The paper's qualitative claims, checked on a data set's own runs: a section of the report.

Lim et al. report five orderings that a reader of any featbench report wants to see tested on
their data (PROTOCOL.md, "Qualitative findings"): fine-tuned networks beat their frozen codes;
an SVM on a fine-tuned network's codes beats one on the frozen codes; the ensemble with the
fine-tuned members (``fe+ft``) beats the frozen one (``fe``); each AU's region beats the whole
face; each ensemble beats its best member. Plus two that the paper states for every network:
SVM above LDA, and (with ``--controls``) pretrained weights above a random initialisation.

Every comparison is found here from ``summary.csv`` (:func:`check_claims`): runs of one setting
(protocol, seed...) only, random-init runs only in the pretraining comparison. A claim with no
pair of runs to compare says so; none is ever filled in by hand. Each comparison is decided by
a paired test over the test subjects both runs scored (:mod:`featbench.core.stats`): the
difference of mean F1 with its interval, the p-value Holm-adjusted over the comparisons of the
table, and a verdict — *holds* (significant in the claimed direction), *reversed* (significant
against it) or *not decided* (at this sample size); a pair without predictions files is *not
tested*, never judged by its point estimates. :func:`claims_lines` writes the table, plain
sentences naming what is reversed and what is not decided, and the networks that the last
``featbench run`` left out with what they would add.
"""

import math

from featbench.core import stats
from featbench.core.identity import RunKey, weights_of
from featbench.core.errors import UsageError

from classify.finetune import is_variant_tag

from featbench.app.cells import p_value

#: the last ``featbench run``'s plan, beside summary.csv (written by featbench.app.pipeline):
#: the networks it left out, which the report names with what they would add
RUN_PLAN = "run_plan.json"

#: (key, the paper's claim) in the order the report shows them
CLAIMS = (("ft", "a fine-tuned network beats an SVM on its frozen codes"),
          ("ft_codes", "an SVM on the fine-tuned network's codes beats one on its frozen codes"),
          ("fe_ft", "the ensemble with fine-tuned members (fe+ft) beats the frozen one (fe)"),
          ("regions", "each AU's face region beats the whole face"),
          ("ensemble", "an ensemble beats its best member"),
          ("svm_lda", "a linear SVM beats LDA on the same codes"),
          ("pretrained", "pretrained weights beat a random initialisation of the same network"))

#: what an ImageNet network left out of the quick run would add (said in the report)
LEFT_OUT_ADDS = ("ImageNet feature-extraction members for `fe` (the paper's ensembles are built "
                 "from ImageNet CNNs) and their frozen-code rows, for comparison with the face-"
                 "pretrained dlib_face")


def _key(run):
    try:
        return RunKey.parse(run)
    except UsageError:
        return None


def _setting(key):
    """The tags of a run that are not fine-tuning variants: its protocol / seed / AU setting."""
    return tuple(t for t in key.tags if not (key.clf == "ft" and is_variant_tag(t)))


def _random_runs(rows):
    """Runs whose network started from random weights (fine-tuned codes followed to their run)."""
    weights = {r["run"]: str(r.get("weights") or "") for r in rows}

    def random(run, seen=()):
        for w in weights_of(weights.get(run, "")):
            if w.is_random:
                return True
            if w.kind == "finetuned" and w.name not in seen and random(w.name, seen + (run,)):
                return True
        return False

    return {run for run in weights if random(run)}


class _Runs:
    """The succeeded runs of one setting, by (model, region, clf), best mean F1 first."""

    def __init__(self, rows, setting):
        self.f1, self.by_slot, self.members = {}, {}, {}
        for r in rows:
            key = _key(r["run"])
            if key is None or _setting(key) != setting or not math.isfinite(r["mean_f1"]):
                continue
            self.f1[r["run"]] = r["mean_f1"]
            self.by_slot.setdefault((key.model, key.region, key.clf), []).append(r["run"])
            if key.clf == "vote" and r.get("members"):
                self.members[r["run"]] = [m for m in str(r["members"]).split(",") if m]
        for runs in self.by_slot.values():
            runs.sort(key=lambda run: -self.f1[run])

    def best(self, model, region, clf):
        runs = self.by_slot.get((model, region, clf))
        return runs[0] if runs else None

    def every(self, model, region, clf):
        """Every variant of a slot (fine-tuning's ``ml``, ``fc67``, ``headonly`` ...): a claim
        is tested for each of them, each a comparison of the Holm family, rather than for the
        one with the best test F1, which would be a choice made on the test set."""
        return list(self.by_slot.get((model, region, clf), ()))

    def models(self, region, clf):
        return sorted(m for (m, r, c) in self.by_slot if r == region and c == clf)


def _pair(a, b, claim):
    """A comparison row ``(claim, run a, run b)`` when both runs exist."""
    return (claim, a, b) if a and b else None


def _comparisons(ok, rnd):
    """The ``(claim key, better-by-the-paper run, other run)`` pairs found among ``ok``'s runs."""
    out = []
    for model in ok.models("full", "svm"):
        frozen = ok.best(model, "full", "svm")
        out += [_pair(a, frozen, "ft") for a in ok.every(model, "full", "ft")]
        out += [_pair(a, frozen, "ft_codes") for a in ok.every(f"{model}-ft", "full", "svm")]
        out += [_pair(a, frozen, "regions") for a in ok.every(model, "auto", "svm")]
        out.append(_pair(frozen, ok.best(model, "full", "lda"), "svm_lda"))
    for model in ok.models("full", "ft"):
        out += [_pair(a, ok.best(model, "full", "ft"), "regions")
                for a in ok.every(model, "auto", "ft")]
    out.append(_pair(ok.best("ensemble-fe+ft", "full", "vote"),
                     ok.best("ensemble-fe", "full", "vote"), "fe_ft"))
    for vote, members in sorted(ok.members.items()):
        scored = [m for m in members if m in ok.f1]
        if scored:
            out.append(("ensemble", vote, max(scored, key=lambda m: ok.f1[m])))
    return [c for c in out if c is not None and c[1] not in rnd and c[2] not in rnd]


def _controls(rows, setting, rnd):
    """``pretrained`` pairs: a pretrained run beside the random-init run of the same slot."""
    pre, ctl = _Runs([r for r in rows if r["run"] not in rnd], setting), {}
    for r in rows:
        key = _key(r["run"])
        if r["run"] in rnd and key is not None and math.isfinite(r["mean_f1"]):
            slot = (key.model, key.region, key.clf)
            ctl.setdefault(slot, r["run"])
    pairs = [("pretrained", pre.best(*slot), run) for slot, run in sorted(ctl.items())]
    return [p for p in pairs if p[1]]


def check_claims(rows, *, comparer=None):
    """Return the comparisons of the paper's claims among ``rows`` (succeeded summary rows).

    Parameters
    ----------
    rows : list of dict
        ``run``, ``mean_f1`` (a float), ``weights``, ``members`` (ensembles) of each run.
    comparer : featbench.app.comparisons.Comparer, optional
        Decides each comparison by the paired test; without it (or without a run's predictions
        file) a comparison is *not tested*. The tests' level is its settings' (without it:
        :func:`featbench.core.stats.current_settings`).

    Returns
    -------
    list of dict
        One per comparison, in :data:`CLAIMS` order: ``claim`` (key), ``text``, ``a`` (the run
        the paper says is better), ``b``, ``f1_a``, ``f1_b``, and from the test ``diff``,
        ``lo``, ``hi`` (A - B of mean F1 and its interval), ``p``, ``p_adj`` (Holm over the
        comparisons tested), ``subjects``, and ``verdict``: ``holds``, ``reversed``, ``not
        decided`` or ``not tested``. Runs of the default setting (no protocol / seed tags) when
        there are any, else of the commonest setting.
    """
    keys = [(_key(r["run"]), r) for r in rows]
    settings = [_setting(k) for k, _ in keys if k is not None]
    if not settings:
        return []
    setting = () if () in settings else max(set(settings), key=settings.count)
    rnd = _random_runs(rows)
    runs = _Runs([r for r in rows if r["run"] not in rnd], setting)
    found = _comparisons(runs, rnd) + _controls(rows, setting, rnd)
    f1 = {r["run"]: r["mean_f1"] for r in rows}
    texts = dict(CLAIMS)
    order = {k: i for i, (k, _) in enumerate(CLAIMS)}
    found = sorted(found, key=lambda c: order[c[0]])
    tests = (comparer.compare_many([(a, b) for _, a, b in found]) if comparer is not None
             else [None] * len(found))
    alpha = (comparer.settings if comparer is not None else stats.current_settings()).alpha
    return [{"claim": c, "text": texts[c], "a": a, "b": b, "f1_a": f1[a], "f1_b": f1[b],
             **_decided(t, alpha)} for (c, a, b), t in zip(found, tests)]


def _decided(test, alpha):
    """The test's numbers of one comparison (mean F1, A - B) and its verdict."""
    nan = float("nan")
    if test is None:
        return {"diff": nan, "lo": nan, "hi": nan, "p": nan, "p_adj": nan, "subjects": 0,
                "verdict": "not tested"}
    out = {k: float(test[k][-1]) for k in ("diff", "lo", "hi", "p")}
    out.update(p_adj=test["p_adj"], subjects=test["subjects"],
               verdict=stats.verdict(out["diff"], test["p_adj"], alpha))
    return out


def _pct(v, sign=False):
    return "—" if not math.isfinite(v) else f"{v * 100:{'+' if sign else ''}.1f}"


VERDICT_CELL = {"holds": "**holds**", "reversed": "**reversed**",
                "not decided": "not decided", "not tested": "not tested (no predictions file)"}


def claims_lines(rows, *, left_out=None, comparer=None):
    """The report's section: a table of :func:`check_claims`, what does not hold, what is missing.

    Parameters
    ----------
    rows : list of dict
        Succeeded summary rows (see :func:`check_claims`).
    left_out : dict, optional
        ``{network: why}`` that the last ``featbench run`` left out (its ``run_plan.json``).
    comparer : featbench.app.comparisons.Comparer, optional
        Decides each comparison (:func:`check_claims`).
    """
    found = check_claims(rows, comparer=comparer)
    settings = comparer.settings if comparer is not None else stats.current_settings()
    tested = [c for c in found if c["verdict"] != "not tested"]
    lines = ["## The paper's claims on this data", "",
             "Each claim of Lim et al. compared on this data set's own runs (mean F1 over AUs, %; "
             "random-init runs only in the last claim): A is the run the paper says is better, "
             "B the other, compared on the test frames both scored, paired over the test subjects "
             f"({max((c['subjects'] for c in tested), default=0)} here). Difference A - B with its "
             f"{settings.level * 100:g}% interval ({stats.METHOD}); p from a {stats.TEST}, "
             f"Holm-adjusted over the {len(tested)} comparisons of the table. *holds*: adjusted p < "
             f"{settings.alpha:.2g} and A > B; *reversed*: adjusted p < {settings.alpha:.2g} and "
             "A < B; *not decided*: the data cannot tell them apart at this sample size.", ""]
    if found:
        lines += ["| the paper's claim | A vs B | F1 % A vs B | A - B [interval] | p (Holm) | "
                  "verdict |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['text']} | `{c['a']}` vs `{c['b']}` | {c['f1_a'] * 100:.1f} vs "
                  f"{c['f1_b'] * 100:.1f} | {_pct(c['diff'], True)} [{_pct(c['lo'], True)}, "
                  f"{_pct(c['hi'], True)}] | {p_value(c['p_adj'])} | {VERDICT_CELL[c['verdict']]} |"
                  for c in found]
        lines.append("")
    lines += _verdict_lines(found) + power_lines(tested, settings)
    if left_out:
        lines += [f"Left out of the last `featbench run`: {', '.join(f'`{m}`' for m in left_out)} "
                  f"({'; '.join(left_out.values())}). They would add {LEFT_OUT_ADDS}; "
                  "`featbench weights fetch NAME` (or `import PATH`) and a rerun add them, "
                  "`featbench run --controls` runs them from random weights as controls.", ""]
    return lines


def power_lines(tested, settings):
    """A sentence when the table cannot decide anything: with S subjects an exact paired test's
    smallest two-sided p is 2 / 2^S, and Holm multiplies the smallest p by the comparisons."""
    subjects = max((c["subjects"] for c in tested), default=0)
    if not subjects or 2 ** subjects > settings.resamples:
        return []
    floor, m = 2.0 / 2 ** subjects, len(tested)
    if floor * m < settings.alpha:
        return []
    return [f"With {subjects} test subjects an exact paired test cannot give p below 2/2^"
            f"{subjects} = {floor:.2g}, and Holm over {m} comparisons multiplies the smallest p by "
            f"{m} ({floor * m:.2g} >= {settings.alpha:.2g}): no comparison in this table can be "
            "decided on this split, whatever its effect. A protocol that tests every subject "
            "(`--protocol kfold:3`) has the power to.", ""]


def _verdict_lines(found):
    """Plain sentences: which claims hold, are reversed, are not decided, could not be checked."""
    texts = dict(CLAIMS)
    by = {}
    for c in found:
        by.setdefault(c["verdict"], set()).add(c["claim"])
    lines = []
    for verdict, head in (("holds", "Hold on this data"),
                          ("reversed", "**Reversed on this data** (significantly against the claim)"),
                          ("not decided", "**Not decided at this sample size**"),
                          ("not tested", "Not tested (a run has no predictions file)")):
        keys = by.get(verdict, set())
        if keys:
            lines.append(head + ": " + "; ".join(
                texts[k] + (" (in some comparisons)" if any(k in v for w, v in by.items()
                                                            if w != verdict) else "")
                for k, _ in CLAIMS if k in keys) + ".")
    checked = {c["claim"] for c in found}
    unchecked = [texts[k] for k, _ in CLAIMS if k not in checked]
    if unchecked:
        lines.append("Not compared (no pair of runs for it): " + "; ".join(unchecked) + ".")
    return lines + [""] if lines else []
