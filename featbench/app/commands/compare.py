"""``featbench compare RUN_A RUN_B``: the paired difference of two runs over the subjects both
scored, with its interval and a paired test (featbench.core.stats)."""

from featbench.app.commands._common import add_ci_args, ci_settings_of, print_json, workspace_of

DESCRIPTION = """\
Compare two finished runs of one data set on the test frames both scored (matched by frame;
their AUs in common): the difference A - B of mean F1 and of each AU's F1 (two intensity runs:
ICC(3,1)), each with a paired bootstrap interval (test subjects resampled, the same ones for
both runs), and a p-value from a paired permutation test over subjects (which run's predictions
count as A is swapped subject by subject; exact when 2^subjects <= --ci-resamples). Per-AU
p-values are also given Holm-adjusted over the AUs. A and B are run names as in summary.csv
(featbench report lists them).
"""


def add_parser(subparsers):
    """Register ``featbench compare``."""
    import argparse

    p = subparsers.add_parser("compare", help="paired difference of two runs: interval and p-value",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", metavar="RUN_A", help="the first run (e.g. hog__auto__svm)")
    p.add_argument("run_b", metavar="RUN_B", help="the run it is compared with (A - B)")
    p.add_argument("--dataset", default="synth", metavar="NAME",
                   help="the data set whose results hold both runs (default: synth)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the table")
    add_ci_args(p)
    p.set_defaults(func=_run)


def _run(args):
    from featbench.app.comparisons import Comparer

    settings = ci_settings_of(args)
    result = Comparer(workspace_of(args), args.dataset, settings).compare(args.run_a, args.run_b)
    if args.json:
        print_json(as_json(result, settings))
    else:
        print(format_comparison(result, settings))
    return 0


def _pct(v, metric, sign=False):
    import math

    from featbench.core.stats import INTENSITY_METRICS

    if v is None or not math.isfinite(v):
        return "—"
    scale, digits = (1, 3) if metric in INTENSITY_METRICS else (100, 1)
    return f"{v * scale:{'+' if sign else ''}.{digits}f}"


def format_comparison(c, settings):
    """The comparison as a few lines and a markdown table (mean first, then each AU)."""
    from featbench.app.cells import p_value as _p
    from featbench.core.stats import INTENSITY_METRICS, verdict

    m = c["metric"].upper()
    unit = "" if c["metric"] in INTENSITY_METRICS else " (%)"
    rows = [("mean", -1)] + [(au, i) for i, au in enumerate(c["aus"])]
    lines = [f"A = {c['run_a']}  vs  B = {c['run_b']}",
             f"paired over {c['subjects']} test subjects ({c['frames']} frames both scored), "
             f"{len(c['aus'])} AUs",
             f"interval: {c['interval']}", f"test: {c['test']}; per-AU p also Holm-adjusted "
             f"over the {len(c['aus'])} AUs", *(f"note: {n}" for n in c["notes"]), "",
             f"| AU | {m} A{unit} | {m} B{unit} | A - B [{settings.level * 100:g}% CI] | p | "
             "p (Holm) |", "| --- | --- | --- | --- | --- | --- |"]
    for au, i in rows:
        lines.append(f"| {au} | {_pct(c['a'][i], c['metric'])} | {_pct(c['b'][i], c['metric'])} | "
                     f"{_pct(c['diff'][i], c['metric'], True)} [{_pct(c['lo'][i], c['metric'], True)}, "
                     f"{_pct(c['hi'][i], c['metric'], True)}] | {_p(c['p'][i])} | "
                     f"{'—' if i < 0 else _p(c['p_holm'][i])} |")
    v = verdict(float(c["diff"][-1]), float(c["p"][-1]), settings.alpha)
    said = {"holds": "A is better than B", "reversed": "B is better than A",
            "not decided": "not decided at this sample size"}[v]
    lines += ["", f"mean {m}: {said} (p {_p(c['p'][-1])}, alpha {settings.alpha:.2g})"]
    return "\n".join(lines)


def as_json(c, settings):
    """The comparison as plain JSON types (nan -> null)."""
    import math

    from featbench.core.stats import verdict

    def num(v):
        v = float(v)
        return v if math.isfinite(v) else None

    per_au = [{"au": au, "a": num(c["a"][i]), "b": num(c["b"][i]), "diff": num(c["diff"][i]),
               "lo": num(c["lo"][i]), "hi": num(c["hi"][i]), "p": num(c["p"][i]),
               "p_holm": num(c["p_holm"][i])} for i, au in enumerate(c["aus"])]
    return {"run_a": c["run_a"], "run_b": c["run_b"], "metric": c["metric"],
            "subjects": c["subjects"], "frames": c["frames"], "level": settings.level,
            "resamples": settings.resamples, "seed": settings.seed, "interval": c["interval"],
            "test": c["test"], "exact": c["exact"],
            "mean": {"a": num(c["a"][-1]), "b": num(c["b"][-1]), "diff": num(c["diff"][-1]),
                     "lo": num(c["lo"][-1]), "hi": num(c["hi"][-1]), "p": num(c["p"][-1]),
                     "verdict": verdict(float(c["diff"][-1]), float(c["p"][-1]), settings.alpha)},
            "aus": per_au, "notes": list(c["notes"])}
