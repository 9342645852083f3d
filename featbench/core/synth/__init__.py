"""The embedded synthetic data sets: face videos with known AU labels, in real data sets' layouts.

:func:`generate_dataset` renders subjects (identity, AU episodes, head motion, light, blur,
noise, occlusion; see ``_face``, ``_timeline``, ``_render``) in one of the renderer's domains
(``_domain``: studio, camera and pool of people) and writes them in one of four on-disk
layouts, so that featbench reads them through the very readers real data goes through:

============== ==================================================================================
layout         what is written under ``root``
============== ==================================================================================
``disfa``      DISFA as distributed: ``ActionUnit_Labels/SN001/SN001_au1.txt`` (``frame,intensity``),
               ``Videos_LeftCamera/LeftVideoSN001_comp.avi`` (and ``Video_RightCamera/``, a second
               view), ``Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat`` (66 points)
``affwild2``   ABAW3's AU track: ``AU_Detection_Challenge/{Train,Validation}_Set/<video>.txt`` and
               ``cropped_aligned/<video>/00001.jpg`` (112 x 112 aligned faces)
``expression`` posed expressions from 5 views: ``images/<subject>/<subject>_<expr>_<view>.png``
               and ``manifest.csv`` (``image,subject,view,expression``)
``bp4d``       BP4D-Spontaneous as distributed: ``AUCoding/AU_OCC/F001_T1.csv`` (header, frame,
               one column per AU: 0 / 1 / 9 not coded), ``AUCoding/AU_INT/AU06/F001_T1_AU06.csv``
               (FERA 2015 intensities of AU06, 10, 12, 14, 17) and ``2D+3D/F001/T1/0004.jpg``;
               8 tasks per subject, each eliciting its own actions (``_timeline.BP4D_TASK_RATES``),
               subject ids dealt from the protocol's three folds in turn
============== ==================================================================================

Same seed, same bytes: every random draw comes from a per-subject seed sequence, and the files
carry no time stamps. Nothing here imports OpenCV at module level (``featbench --help`` stays
instant).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from featbench.core.errors import UsageError, did_you_mean
from featbench.core.workspace import remove_path, replace_together, temp_sibling
from featbench.core.synth import _layouts as L
from featbench.core.synth._domain import DOMAINS, get_domain
from featbench.core.synth._layouts import MAX_SUBJECTS
from featbench.core.synth._sheet import contact_sheet as _cs

LAYOUTS = ("disfa", "affwild2", "expression", "bp4d")
#: frames per subject (``disfa``), per video (``affwild2``), takes per expression and view
#: (``expression``) when ``frames`` is None
DEFAULT_FRAMES = {"disfa": 240, "affwild2": 120, "expression": 1, "bp4d": 20}
DEFAULT_SUBJECTS = 27
#: subjects when ``subjects`` is None: DISFA's 27, BP4D's 41
LAYOUT_SUBJECTS = {"bp4d": 41}
MIN_SUBJECTS = 3  # train / validation / test need a subject each
AFFWILD2_CROP = 112
EXPRESSION_CROP = 128
FORMAT_VERSION = 1
INFO_FILE = "featbench_synth.json"

__all__ = ["generate_dataset", "contact_sheet", "get_domain", "LAYOUTS", "DEFAULT_FRAMES", "DOMAINS"]


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"--{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise UsageError(f"--{name} {value}: must be between {lo} and {hi}")


@dataclass(frozen=True)
class SynthSpec:
    """What a synthetic set is (:func:`generate_dataset`'s arguments of the same names, which
    document them): checked when made, ``subjects`` and ``frames`` filled with the layout's
    defaults, ``difficulty`` a float.

    Raises
    ------
    UsageError
        Unknown layout or domain, a domain for ``expression``, out-of-range numbers.
    """

    layout: str = "disfa"
    subjects: Optional[int] = None
    frames: Optional[int] = None
    seed: int = 0
    difficulty: float = 1.0
    right_camera: bool = True
    domain: str = "a"

    def __post_init__(self):
        layout, domain = self.layout, self.domain
        if layout not in LAYOUTS:
            raise UsageError(did_you_mean(str(layout), LAYOUTS, what="layout"))
        get_domain(domain)
        if layout == "expression" and domain != "a":
            raise UsageError("--domain applies to the video layouts (disfa, affwild2, bp4d), "
                             "not to the posed-expression set")
        subjects = LAYOUT_SUBJECTS.get(layout, DEFAULT_SUBJECTS) if self.subjects is None else self.subjects
        _check_int("subjects", subjects, MIN_SUBJECTS, MAX_SUBJECTS if layout != "bp4d" else 41)
        frames = DEFAULT_FRAMES[layout] if self.frames is None else self.frames
        _check_int("frames", frames, 1 if layout == "expression" else 4, 100 if layout == "expression" else 100000)
        _check_int("seed", self.seed, 0, 2 ** 63 - 1)
        if not 0.0 <= float(self.difficulty) <= 3.0:
            raise UsageError(f"difficulty {self.difficulty}: must be between 0 and 3")
        for name, value in (("subjects", subjects), ("frames", frames),
                            ("difficulty", float(self.difficulty))):
            object.__setattr__(self, name, value)


def generate_dataset(root, *, layout="disfa", subjects=None, frames=None, seed=0,
                     progress=True, overwrite=False, right_camera=True, difficulty=1.0, workers=None,
                     domain="a"):
    """Generate a synthetic data set at ``root``; return ``root`` as a Path.

    The set is written into a temporary sibling folder and renamed into place at the end, so
    an interrupted run never leaves a half data set at ``root``.

    Parameters
    ----------
    root : str or Path
        Folder to create (must not exist, or be empty, unless ``overwrite``).
    layout : {"disfa", "affwild2", "expression", "bp4d"}
    subjects : int, optional
        People, 3-64 (``bp4d``: 3-41). ``disfa`` uses DISFA's 27 ids (SN001 ... SN032 with its
        gaps), then SN033...; ``bp4d`` BP4D's 41 ids. Default: 41 for ``bp4d``, else 27.
    frames : int, optional
        Frames per subject (``disfa``), video (``affwild2``) or task (``bp4d``, coded frames);
        takes per expression and view (``expression``). Default :data:`DEFAULT_FRAMES` of the
        layout.
    seed : int
        Same seed, same bytes in every file.
    progress : bool
        A tqdm bar on stderr.
    overwrite : bool
        Replace an existing, non-empty ``root``.
    right_camera : bool
        ``disfa``: also write ``Video_RightCamera`` (the same faces from another yaw); about
        half the generation time.
    difficulty : float
        Scales every nuisance (pose, light, blur, noise, occlusion); 1 is the calibrated default.
    workers : int, optional
        Processes rendering subjects in parallel (default: up to 2, one per CPU).
    domain : str
        The renderer's domain (:data:`DOMAINS`: ``a`` the default studio, ``b`` another
        studio, camera and pool of people); not for ``expression``.

    Raises
    ------
    UsageError
        Unknown layout, out-of-range numbers, or ``root`` exists and ``overwrite`` is False.
    """
    spec = SynthSpec(layout=layout, subjects=subjects, frames=frames, seed=seed,
                     difficulty=difficulty, right_camera=right_camera, domain=domain)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: exists and is not a folder")
    _check_replaceable(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(root)  # unique; what a killed generator left is removed
    tmp.mkdir()
    try:
        info = _generate(tmp, spec, progress=progress, workers=workers)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        replace_together([(tmp, root)])  # the old set aside, deleted once the new one is in
    except BaseException:
        remove_path(tmp)
        raise
    return root


def _check_replaceable(root, overwrite):
    """Refuse to replace a non-empty ``root`` unless ``overwrite``, and then only a folder this
    generator made, holding nothing a user added or changed since."""
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UsageError(f"{root}: already exists (pass --force to replace it, or another --root)")
        # only a folder this generator made carries its info file: a user's own data set with
        # the same layout (a manifest, DISFA's folders) is never deleted
        if not (root / INFO_FILE).is_file():
            raise UsageError(f"{root}: not made by featbench data synth (no {INFO_FILE}); "
                             "--force replaces only folders it made: pass another --root")
        added = files_added_since(root)
        if added:
            more = f" and {len(added) - 3} more" if len(added) > 3 else ""
            raise UsageError(f"{root}: holds {len(added)} file(s) added or changed after featbench "
                             f"data synth made it ({', '.join(map(str, added[:3]))}{more}); "
                             "--force replaces only what featbench made: move them out first")


#: featbench's own caches inside a data set's folder (``featbench align``): never a user's
_OWN_SUBFOLDERS = ("aligned",)


def files_added_since(root):
    """Return the files of a synthetic ``root`` created or changed after it was generated.

    Every generated file exists before :data:`INFO_FILE` is written, so a later change time
    (``st_ctime``: a copy, even one that keeps the original's modification time, an edit, a
    new file) means a user's hand; featbench's own caches (``aligned/``) do not count.
    """
    root = Path(root)
    made = (root / INFO_FILE).stat().st_ctime_ns
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in _OWN_SUBFOLDERS]
        for name in filenames:
            p = Path(dirpath) / name
            if p.name != INFO_FILE and p.lstat().st_ctime_ns > made:
                out.append(p.relative_to(root))
    return sorted(out)


def _generate(tmp, spec, *, progress, workers):
    layout, subjects, frames, seed = spec.layout, spec.subjects, spec.frames, spec.seed
    difficulty, right_camera, domain = spec.difficulty, spec.right_camera, spec.domain
    if layout == "disfa":
        ids = L.subject_ids(subjects)
        for sub in ("Videos_LeftCamera",) + (("Video_RightCamera",) if right_camera else ()):
            (tmp / sub).mkdir()
        jobs = [(L.write_disfa_subject, (tmp, seed, i, s, frames, difficulty, right_camera, domain))
                for i, s in enumerate(ids)]
    elif layout == "affwild2":
        ids = L.affwild2_videos(subjects)
        jobs = [(L.write_affwild2_video, (tmp, seed, i, v, frames, difficulty, AFFWILD2_CROP, domain))
                for i, v in enumerate(ids)]
    elif layout == "bp4d":
        ids = L.bp4d_subject_ids(subjects)
        jobs = [(L.write_bp4d_subject, (tmp, seed, i, s, frames, difficulty, domain))
                for i, s in enumerate(ids)]
    else:
        ids = [f"S{i + 1:03d}" for i in range(subjects)]
        jobs = [(L.write_expression_subject, (tmp, seed, i, s, frames, difficulty, EXPRESSION_CROP))
                for i, s in enumerate(ids)]
    results = _run_jobs(jobs, progress=progress, workers=workers, desc=f"synth {layout}")
    if layout == "expression":
        import csv

        with open(tmp / "manifest.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["image", "subject", "view", "expression"])
            for res in results:
                w.writerows(res["rows"])
    return {"generator": "featbench.core.synth", "format_version": FORMAT_VERSION, "layout": layout,
            "subjects": len(ids), "ids": ids, "frames": frames, "seed": seed, "difficulty": difficulty,
            "right_camera": bool(right_camera) if layout == "disfa" else None, "domain": domain}


def _call(job):
    import cv2

    # one thread per process: the pool already uses the cores, OpenCV's threads would fight it
    cv2.setNumThreads(1)
    fn, args = job
    return fn(*args)


def _run_jobs(jobs, *, progress, workers, desc):
    """Run ``(function, args)`` jobs, in a small process pool when it pays; results in job order."""
    from tqdm import tqdm

    n_cpu = os.cpu_count() or 1
    workers = min(2, n_cpu) if workers is None else max(1, int(workers))
    workers = min(workers, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit="subject", disable=not progress, leave=False)
    try:
        if workers <= 1:
            out = []
            for job in jobs:
                out.append(_call(job))
                bar.update()
            return out
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child inherits OpenCV's / OpenMP's thread-pool locks in
        # whatever state the parent's threads left them (a deadlock seen under pytest once torch
        # had run). Results do not depend on which worker renders a subject (each seeds itself).
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_call, job) for job in jobs]
            for fut in futures:
                fut.add_done_callback(lambda _f: bar.update())
            return [f.result() for f in futures]
    finally:
        bar.close()


def contact_sheet(table, out_png, *, n=24, seed=0):
    """Draw ``n`` sample frames of ``table`` in a grid, active AUs under each; return the PNG path.

    See :func:`featbench.core.synth._sheet.contact_sheet`.
    """
    return _cs(table, out_png, n=n, seed=seed)
