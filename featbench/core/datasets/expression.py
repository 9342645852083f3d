"""Readers of posed-expression sets: Method B's stage-1 data, in the layouts users have them.

Every reader returns a :class:`~featbench.core.frames.FrameTable` with no AU columns, an
``expression`` column (the class of each image) and ``notes["classes"]``: the sorted class
names found in the data — never a hard-coded list (Multi-PIE has six, RAF-DB seven, AffectNet
eight).

========================= ===================================================================
name                      layout
========================= ===================================================================
``synth-expression``      the embedded posed-expression set (``data synth --layout expression``):
                          ``manifest.csv`` with ``image,subject,view,expression``; its crops are
                          aligned already
``manifest``              a user's CSV ``image,subject,expression`` (more columns are kept);
                          ``--expr-root`` names the CSV or the folder holding ``manifest.csv``
``subfolders``            one folder per class, as RAF-DB / AffectNet-style exports:
                          ``<root>/<class>/<image>``; the subject of an image comes from the
                          ``subject_rule`` (see :func:`subject_of`)
========================= ===================================================================

A set whose images are aligned face crops already (RAF-DB's ``aligned`` folder) is marked with
``pre_aligned=True``: alignment then only resizes them instead of detecting faces.

Problems end with a :class:`~featbench.core.errors.DataError` naming the file: a folder without
class subfolders, a single class (nothing to classify), an image that does not decode, a
manifest without an ``expression`` column or with an empty class.
"""

import csv
import re
from pathlib import Path

from featbench.core.datasets import load_dataset, resolve_root
from featbench.core.datasets._text import read_lines
from featbench.core.errors import DataError, LabelFileError, LayoutError, UsageError
from featbench.core.frames import FrameTable, build_frames

#: the expression-set layouts :func:`load_expression_set` reads
EXPRESSION_DATASETS = ("synth-expression", "manifest", "subfolders")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: default subject rule: the file name up to its first underscore (``S001_happy_03.jpg``)
DEFAULT_SUBJECT_RULE = "prefix:_"


def guess_layout(root):
    """Return ``manifest`` when ``root`` is a CSV or holds ``manifest.csv``, else ``subfolders``."""
    root = Path(root)
    if root.suffix.lower() == ".csv" or (root / "manifest.csv").is_file():
        return "manifest"
    return "subfolders"


def load_expression_set(name="synth-expression", *, root=None, workspace=None,
                        subject_rule=DEFAULT_SUBJECT_RULE, pre_aligned=None, check_images=True,
                        progress=True):
    """Read an expression set into a FrameTable with an ``expression`` column.

    Parameters
    ----------
    name : {"synth-expression", "manifest", "subfolders"}
        The layout; ``synth-expression`` is generated on first use.
    root : path, optional
        The set's folder (or manifest CSV); default ``data/<name>`` in the workspace.
    workspace : Workspace, optional
    subject_rule : str
        ``subfolders`` only: how an image's subject is found (:func:`subject_of`).
    pre_aligned : bool, optional
        The images are aligned face crops already (default: True for the embedded set only).
    check_images : bool
        Open every image once, so one that does not decode is named before any training.

    Raises
    ------
    UsageError
        An unknown layout name or subject rule.
    DataError
        A missing folder, no class or a single class, an image that does not decode.
    """
    if name not in EXPRESSION_DATASETS:
        from featbench.core.errors import did_you_mean

        raise UsageError(did_you_mean(name, EXPRESSION_DATASETS, what="expression data set"))
    if name == "synth-expression":
        table = load_dataset("synth-expression", root=root, workspace=workspace, generate=True,
                             progress=progress)  # the embedded set: made on first use
        if "expression" not in table.frames.columns:
            raise LayoutError(f"{table.root}: the manifest has no 'expression' column")
    else:
        path = resolve_root(name, root, workspace=workspace)
        if not path.exists():
            raise DataError(f"{path}: expression data set not found (pass --expr-root DIR)")
        table = read_manifest(path) if name == "manifest" else read_subfolders(path, subject_rule)
        table.dataset = f"expr-{name}"
    if pre_aligned is not None:
        table.pre_aligned = bool(pre_aligned)
    classes = check_classes(table)
    if check_images:
        check_decodable(table)
    table.notes["classes"] = classes
    return table


def check_classes(table):
    """Return the sorted class names of ``table``; DataError when there are fewer than two."""
    classes = sorted(c for c in table.frames["expression"].unique().tolist() if c)
    if not classes:
        raise DataError(f"{table.root}: no expression classes (no labelled images)")
    if len(classes) < 2:
        raise DataError(f"{table.root}: only one expression class ({classes[0]!r}); "
                        "stage 1 needs at least two to classify")
    return classes


def check_decodable(table):
    """Open every image of ``table``; DataError naming the first one that does not decode."""
    from PIL import Image

    for src in table.frames["source"].tolist():
        try:
            with Image.open(src) as im:
                im.verify()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
            raise DataError(f"{src}: image does not decode ({type(exc).__name__})") from None


def subject_of(path, rule, root):
    """Return the subject of image ``path`` under ``rule``.

    ``prefix:SEP``
        The file name's stem up to the first ``SEP`` (``prefix:_``: ``S001_happy.jpg`` -> ``S001``).
    ``regex:PATTERN``
        The first group (or the whole match) of ``PATTERN`` searched in the path relative to
        ``root``: ``regex:(\\d{3})_`` for Multi-PIE's ``001_01_01_051_05.png``.
    ``dir``
        The folder under the class folder: ``<root>/<class>/<subject>/<image>``.

    Raises
    ------
    DataError
        The rule finds no subject in this file's name.
    UsageError
        An unknown rule.
    """
    path, root = Path(path), Path(root)
    kind, _, arg = str(rule).partition(":")
    if kind == "prefix":
        sep = arg or "_"
        subject = path.stem.split(sep, 1)[0] if sep in path.stem else ""
    elif kind == "regex":
        try:
            m = re.search(arg, path.relative_to(root).as_posix())
        except re.error as exc:
            raise UsageError(f"--subject-rule {rule}: bad regular expression ({exc})") from None
        subject = (m.group(1) if m.groups() else m.group(0)) if m else ""
    elif kind == "dir":
        rel = path.relative_to(root).parts
        subject = rel[1] if len(rel) >= 3 else ""
    else:
        raise UsageError(f"unknown --subject-rule {rule!r} (choices: prefix:SEP, regex:PATTERN, dir)")
    if not subject:
        raise DataError(f"{path}: the subject rule {rule!r} finds no subject in this file's name")
    return subject


def read_subfolders(root, subject_rule=DEFAULT_SUBJECT_RULE):
    """Read ``<root>/<class>/[<subject>/]<image>`` into a FrameTable (classes = folder names)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder of class subfolders")
    rows = []
    for cdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in cdir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                        and p.is_file())
        for img in images:
            subject = subject_of(img, subject_rule, root)
            rows.append({"subject": subject, "video": subject, "source": str(img.resolve()),
                         "source_index": -1, "landmark_file": "", "split": "",
                         "expression": cdir.name})
    if not rows:
        raise LayoutError(f"{root}: no class folders with images (expected <root>/<class>/<image>, "
                          f"images ending in {', '.join(IMAGE_SUFFIXES)})")
    _number_frames(rows)
    return FrameTable("expr-subfolders", root, (), build_frames(rows, (), extra=("expression",)),
                      pre_aligned=False)


def read_manifest(path):
    """Read a CSV ``image,subject,expression[,...]`` (or a folder holding ``manifest.csv``)."""
    path = Path(path)
    manifest = path if path.is_file() else path / "manifest.csv"
    if not manifest.is_file():
        raise LayoutError(f"{path}: no manifest.csv (expected columns image,subject,expression)")
    base, rows, missing = manifest.parent, [], 0
    reader = csv.DictReader(read_lines(manifest))  # UTF-8 and OS errors: one line
    header = reader.fieldnames or []
    for col in ("image", "subject", "expression"):
        if col not in header:
            raise LayoutError(f"{manifest}:1: no {col!r} column (header: {','.join(header)})")
    extra = [c for c in header if c not in ("image", "subject", "expression")
             and c not in ("video", "frame", "split", "source")]
    for lineno, rec in enumerate(reader, 2):
        image = Path(rec["image"] or "")
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            missing += 1
            continue
        subject, expr = (rec["subject"] or "").strip(), (rec["expression"] or "").strip()
        if not subject or not expr:
            raise LabelFileError(f"{manifest}:{lineno}: empty {'subject' if not subject else 'expression'}")
        row = {"subject": subject, "video": subject, "source": str(image.resolve()),
               "source_index": -1, "landmark_file": "", "split": "", "expression": expr}
        row.update({c: rec[c] for c in extra})
        rows.append(row)
    if not rows:
        raise DataError(f"{manifest}: no image of the manifest exists ({missing} listed)")
    _number_frames(rows)
    table = FrameTable("expr-manifest", path, (), build_frames(rows, (), extra=("expression", *extra)),
                       pre_aligned=False)
    if missing:
        table.skipped["images missing"] = missing
    return table


def _number_frames(rows):
    """Give each row a frame number within its subject (the frame keys must be unique)."""
    from collections import Counter

    seen = Counter()
    for row in rows:
        row["frame"] = seen[row["subject"]]
        seen[row["subject"]] += 1
