"""How the report's tables write a number: the one place for a cell's text.

A leaf module (imports nothing of featbench): :mod:`featbench.app.report` imports the report's
other sections at the top, so their shared formatting cannot live there.
"""

import math


def as_float(v):
    """``v`` as a float; nan for what summary.csv leaves empty (an AU the run did not score)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def num(v, scale=100.0, digits=1):
    """``v * scale`` with ``digits`` decimals; ``—`` for nan or no number."""
    v = as_float(v)
    return "—" if math.isnan(v) else f"{v * scale:.{digits}f}"


def ci(v, lo, hi, *, scale=100.0, digits=1):
    """``63.1 [58.8, 68.4]``; the value alone when there is no interval; ``—`` for nan."""
    text = num(v, scale, digits)
    lo, hi = as_float(lo), as_float(hi)
    if text == "—" or math.isnan(lo) or math.isnan(hi):
        return text
    return f"{text} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def mean_ci(r, metric, **kw):
    """A summary row's ``mean_<metric>`` with its stored interval."""
    return ci(r.get(f"mean_{metric}"), r.get(f"mean_{metric}_lo"), r.get(f"mean_{metric}_hi"), **kw)


def p_value(p):
    """A p-value: three decimals, ``<0.001`` below that, ``—`` when there is none."""
    return "—" if p is None or not math.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def md_table(header, rows):
    """A markdown table (a ``|`` inside a cell escaped)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)
