"""Joined data sets: two data sets read as one frame table, for cross-data-set evaluation.

``--dataset X+Y`` (``disfa+bp4d``, ``synth+synth-b``) reads X and Y with their own readers and
joins them: subjects are named ``X/SN001``, ``Y/F001`` (two sets never share a person), the
AUs are those both label (DISFA and BP4D share AU01, 02, 04, 06, 12, 15, 17), in X's order.
The joined table is then aligned, extracted, classified and fine-tuned like any data set, under
the two protocols of ``featbench.core.splits``:

``cross``
    train on X (validation subjects, hence C, thresholds and the epoch, drawn from X alone),
    test on Y's test subjects of each fold of Y's own default protocol;
``within``
    Y's own default protocol on the same frames: the within-data-set result to set the cross
    one against (the same test frames, the same codes).

``--root`` names both folders, ``DIR_X,DIR_Y`` (either may be empty: its default).
"""

from pathlib import Path

from featbench.core.errors import UsageError

#: joins two data-set names: ``disfa+bp4d``
JOIN = "+"
#: separates the data set from the subject id in a joined table: ``bp4d/F001``
SUBJECT_SEP = "/"


def split_name(name):
    """Return ``(X, Y)`` of a joined name ``X+Y``, or None for a plain name.

    Raises
    ------
    UsageError
        More than two parts, an empty part, or the same set twice.
    """
    if JOIN not in str(name):
        return None
    parts = str(name).split(JOIN)
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--dataset {name}: join exactly two data sets, X+Y (e.g. disfa+bp4d)")
    if parts[0] == parts[1]:
        raise UsageError(f"--dataset {name}: a data set joined with itself; name two different "
                         "sets (synth+synth-b: the second renderer domain)")
    return tuple(parts)


def split_root(root):
    """Return the roots ``(root X or None, root Y or None)`` of ``--root DIR_X,DIR_Y``."""
    if root is None:
        return None, None
    parts = str(root).split(",")
    if len(parts) != 2:
        raise UsageError(f"--root {root}: a joined data set takes both folders, DIR_X,DIR_Y "
                         "(leave one empty for its default)")
    return tuple(Path(p) if p else None for p in parts)


def _prefixed(table, name, aus):
    """``table``'s frames with subjects named ``name/subject`` and only the AU columns ``aus``."""
    df = table.frames.copy()
    df["subject"] = name + SUBJECT_SEP + df["subject"].astype(str)
    keep = [c for c in df.columns if not (c.startswith("AU") and c.split("_")[0] not in aus)]
    return df[keep]


def join_tables(name, x, y):
    """Return the joined :class:`FrameTable` ``name`` (``X+Y``) of the tables ``x`` and ``y``.

    Raises
    ------
    UsageError
        No AU labelled by both, or one set is already-aligned crops and the other is not (the
        aligned-face cache aligns a table one way).
    """
    import pandas as pd

    from featbench.core.frames import FrameTable

    xn, yn = split_name(name)
    aus = tuple(a for a in x.aus if a in y.aus)
    if not aus:
        raise UsageError(f"{xn} ({', '.join(x.aus)}) and {yn} ({', '.join(y.aus)}) label no AU "
                         "in common: nothing to train on one and test on the other")
    if x.pre_aligned != y.pre_aligned:
        raise UsageError(f"{name}: {xn if x.pre_aligned else yn} holds already-aligned face crops "
                         f"and {yn if x.pre_aligned else xn} whole frames; join sets of one kind")
    intensity = x.has_intensity and y.has_intensity
    frames = pd.concat([_prefixed(x, xn, aus), _prefixed(y, yn, aus)], ignore_index=True)
    if not intensity:
        frames = frames.drop(columns=[c for c in frames.columns if c.endswith("_int")])
    skipped = {f"{n}: {why}": k for n, t in ((xn, x), (yn, y)) for why, k in t.skipped.items()}
    threshold = x.label_threshold if x.label_threshold == y.label_threshold else None
    notes = {"joined": [xn, yn],
             "shared_aus": list(aus),
             "subjects_per_set": {xn: len(x.subjects), yn: len(y.subjects)}}
    return FrameTable(name, x.root, aus, frames, skipped=skipped, has_intensity=intensity,
                      pre_aligned=x.pre_aligned, notes=notes, label_threshold=threshold,
                      landmark_points=max(x.landmark_points, y.landmark_points))


def joined_parts(table):
    """Return ``(X, Y)`` of a joined table, None for any other."""
    parts = table.notes.get("joined") if isinstance(table.notes, dict) else None
    return tuple(parts) if parts else None


def component(table, name):
    """Return the part ``name`` of a joined table as its own table (subjects unprefixed)."""
    from featbench.core.frames import FrameTable

    prefix = name + SUBJECT_SEP
    df = table.frames[table.frames["subject"].astype(str).str.startswith(prefix)].copy()
    df["subject"] = df["subject"].astype(str).str.slice(len(prefix))
    return FrameTable(name, table.root, table.aus, df.reset_index(drop=True),
                      has_intensity=table.has_intensity, pre_aligned=table.pre_aligned,
                      landmark_points=table.landmark_points, label_threshold=table.label_threshold)


def trained_on(dataset, splits):
    """Return the name of the data set whose subjects ``splits`` train and validate on.

    For a joined set ``X+Y`` that is ``X`` under ``cross`` and ``Y`` under ``within``: what a
    run's manifest and ``featbench predict``'s sidecar must name as its training data (a cross
    run never saw Y). A plain name, or folds that train on subjects of both sets, give
    ``dataset`` itself.
    """
    parts = split_name(dataset)
    if not parts:
        return str(dataset)
    seen = {str(s).split(SUBJECT_SEP, 1)[0] for split in splits
            for s in tuple(split.train) + tuple(split.validation)}
    return seen.pop() if len(seen) == 1 and seen <= set(parts) else str(dataset)
