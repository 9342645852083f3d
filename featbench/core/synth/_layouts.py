"""Writers of the four on-disk layouts, one subject (or video) per call.

Each writer is a plain function of picklable arguments, run in a process pool; it writes only
below the temporary root it is given and returns a small dict of counts.
"""

import io

import numpy as np

from featbench.core.aus import AFFWILD2_AUS, BP4D_INTENSITY_AUS, DISFA_AUS
from featbench.core.landmarks import ibug68_to_66
from featbench.core.synth._face import AU_INDEX, sample_identity, strength
from featbench.core.synth._render import FRAME_SIZE, Pose, Scene, render_frame
from featbench.core.synth._subject import SubjectVideo, align_crop, subject_rng
from featbench.core.synth._timeline import BP4D_EVENTS, BP4D_TASK_RATES, intensity_labels

#: DISFA's 27 subject ids; further synthetic subjects continue as SN033, SN034, ...
DISFA_SUBJECTS = ("SN001 SN002 SN003 SN004 SN005 SN006 SN007 SN008 SN009 SN010 SN011 SN012 SN013 "
                  "SN016 SN017 SN018 SN021 SN023 SN024 SN025 SN026 SN027 SN028 SN029 SN030 SN031 "
                  "SN032").split()
MAX_SUBJECTS = 64
#: DISFA's quirks, reproduced: a subject one frame short, one missing landmark file, and
#: subjects whose landmark files are named l0NNNN_lm.mat
SHORT_SUBJECT, MISSING_LANDMARK_SUBJECT = "SN010", "SN031"
L0_NAMING_SUBJECTS = ("SN005", "SN023")
VIDEO_FPS = 20.0  # DISFA's frame rate

_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: featbench synth, Created on: (deterministic)"


def subject_ids(n):
    """The ids of ``n`` synthetic DISFA subjects: DISFA's 27, then SN033, SN034, ..."""
    extra = [f"SN{33 + i:03d}" for i in range(max(0, n - len(DISFA_SUBJECTS)))]
    return (list(DISFA_SUBJECTS) + extra)[:n]


def mat_bytes(pts):
    """A MATLAB v5 file holding ``pts`` (66, 2) float64, with a fixed header (same bytes each time).

    scipy writes the creation time into the 116-byte text header; it is replaced so that the
    same seed gives byte-identical files.
    """
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"pts": np.asarray(pts, np.float64)})
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def _video_writer(path, size):
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, size)
    if not vw.isOpened():
        raise OSError(f"{path}: OpenCV cannot write MJPG video here")
    return vw


def write_disfa_subject(tmp_root, seed, index, subject, n_frames, difficulty, right_camera,
                        domain="a"):
    """Write one subject of the DISFA layout: 12 label files, video(s), landmark files."""
    if subject == SHORT_SUBJECT:
        n_frames -= 1
    video = SubjectVideo(seed, index, n_frames, difficulty=difficulty, domain=domain)
    labels = intensity_labels(video.intensity)
    ldir = tmp_root / "ActionUnit_Labels" / subject
    ldir.mkdir(parents=True)
    for au in DISFA_AUS:
        col = labels[:, AU_INDEX[au]]
        text = "".join(f"{f + 1},{int(v)}\n" for f, v in enumerate(col))
        (ldir / f"{subject}_au{int(au[2:])}.txt").write_text(text)
    mdir = tmp_root / "Landmark_Points" / subject / "tmp_frame_lm"
    mdir.mkdir(parents=True)
    skip_lm = n_frames // 2 if subject == MISSING_LANDMARK_SUBJECT else -1
    vw = _video_writer(tmp_root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi", FRAME_SIZE)
    try:
        for f, img, lm in video.frames(camera="left"):
            vw.write(img)
            if f == skip_lm:
                continue
            name = f"l0{f:04d}_lm.mat" if subject in L0_NAMING_SUBJECTS else f"{subject}_{f:04d}_lm.mat"
            (mdir / name).write_bytes(mat_bytes(ibug68_to_66(lm)))
    finally:
        vw.release()
    if right_camera:
        vw = _video_writer(tmp_root / "Video_RightCamera" / f"RightVideo{subject}_Comp.avi", FRAME_SIZE)
        try:
            for _, img, _ in video.frames(camera="right"):
                vw.write(img)
        finally:
            vw.release()
    return {"frames": n_frames, "positives": (labels[:, [AU_INDEX[a] for a in DISFA_AUS]] >= 2).sum(0)}


def affwild2_videos(n_subjects):
    """Video names of ``n_subjects`` people: most alone (``videoK``), some in pairs (``_left``/``_right``)."""
    names, k, i = [], 1, 0
    while i < n_subjects:
        if i % 7 == 5 and i + 1 < n_subjects:
            names += [f"video{k}_left", f"video{k}_right"]
            i += 2
        else:
            names.append(f"video{k}")
            i += 1
        k += 1
    return names


def write_affwild2_video(tmp_root, seed, index, video_name, n_frames, difficulty, crop, domain="a"):
    """Write one video of the ABAW3 AU layout: label file and aligned crops (some missing)."""
    import cv2

    video = SubjectVideo(seed, index, n_frames, difficulty=difficulty, domain=domain)
    occ = (intensity_labels(video.intensity)[:, [AU_INDEX[a] for a in AFFWILD2_AUS]] >= 2).astype(int)
    r = subject_rng(seed, index, 9)
    values = occ.astype(np.int64)
    if r.random() < 0.5:  # a stretch the annotators skipped
        length = max(1, int(n_frames * r.uniform(0.03, 0.12)))
        start = int(r.integers(0, max(1, n_frames - length)))
        values[start:start + length] = -1
    # Frames where the face detector failed have labels but no image: mostly occluded frames.
    occluded = np.array([bool(o) for o in video.occluder])
    no_face = (r.random(n_frames) < 0.02) | (occluded & (r.random(n_frames) < 0.5))
    split = "Validation_Set" if int(video_name.split("_")[0][5:]) % 3 == 0 else "Train_Set"
    lpath = tmp_root / "AU_Detection_Challenge" / split / f"{video_name}.txt"
    lpath.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(f"AU{int(a[2:])}" for a in AFFWILD2_AUS)]
    lines += [",".join(str(int(v)) for v in row) for row in values]
    lpath.write_text("\n".join(lines) + "\n")
    idir = tmp_root / "cropped_aligned" / video_name
    idir.mkdir(parents=True)
    written = 0
    for f, img, lm in video.frames():
        if no_face[f]:
            continue
        ok, buf = cv2.imencode(".jpg", align_crop(img, lm, crop), [cv2.IMWRITE_JPEG_QUALITY, 92])
        (idir / f"{f + 1:05d}.jpg").write_bytes(buf.tobytes())
        written += 1
    return {"frames": n_frames, "images": written, "unannotated": int((values[:, 0] < 0).sum())}


#: Multi-PIE's expression classes and the AUs (peak intensity) that make each
EXPRESSIONS = {
    "neutral": {},
    "smile": {"AU06": 3.0, "AU12": 4.0, "AU25": 1.5},
    "surprise": {"AU01": 4.0, "AU02": 4.0, "AU05": 3.0, "AU25": 3.5, "AU26": 3.5},
    "squint": {"AU06": 2.0, "AU07": 4.0, "AU04": 1.5},
    "disgust": {"AU09": 4.0, "AU10": 3.5, "AU04": 3.0, "AU17": 2.0},
    "scream": {"AU04": 3.0, "AU06": 2.5, "AU07": 3.0, "AU09": 2.0, "AU10": 3.0, "AU20": 3.0,
               "AU25": 5.0, "AU26": 5.0},
}
#: camera views of the expression set: name -> yaw in degrees
VIEWS = {"l30": 30.0, "l15": 15.0, "f00": 0.0, "r15": -15.0, "r30": -30.0}


def write_expression_subject(tmp_root, seed, index, subject, takes, difficulty, crop):
    """Write one subject's posed expressions from every view; return its manifest rows."""
    import cv2

    idt = sample_identity(subject_rng(seed, index, 0))
    r = subject_rng(seed, index, 2)
    noise_rng = subject_rng(seed, index, 3)
    idir = tmp_root / "images" / subject
    idir.mkdir(parents=True)
    rows = []
    w, h = FRAME_SIZE
    for expr, aus in EXPRESSIONS.items():
        for take in range(takes):
            inten = np.zeros(len(AU_INDEX), np.float32)
            for au, peak in aus.items():
                inten[AU_INDEX[au]] = np.clip(peak * r.uniform(0.75, 1.2), 0, 5)
            light = Scene(r.uniform(0, 2 * np.pi), r.uniform(0.0, 0.3) * difficulty, r.uniform(0.8, 1.1),
                          (1 + r.uniform(-0.08, 0.08, 3) * difficulty).astype(np.float32),
                          r.uniform(0, 0.8) * difficulty, r.uniform(1, 4) * difficulty,
                          (r.uniform(-0.1, 0.1), r.uniform(-0.05, 0.05)))
            for view, yaw in VIEWS.items():
                pose = Pose(yaw + r.uniform(-3, 3), r.uniform(-4, 4), r.uniform(-4, 4),
                            r.uniform(115, 130), w / 2 + r.uniform(-10, 10), h * 0.43 + r.uniform(-6, 6))
                img, lm = render_frame(idt, strength(inten), pose, light, noise_rng)
                suffix = f"_{take + 1}" if takes > 1 else ""
                name = f"{subject}_{expr}_{view}{suffix}.png"
                ok, buf = cv2.imencode(".png", align_crop(img, lm, crop))
                (idir / name).write_bytes(buf.tobytes())
                rows.append((f"images/{subject}/{name}", subject, view, expr))
    return {"rows": rows}


# --- BP4D ----------------------------------------------------------------------------------
#: AU_OCC's columns as BP4D distributes them (after the frame column, headed "0")
BP4D_OCC_COLUMNS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23,
                    24, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39)
BP4D_TASKS = 8
#: images before coding starts and after it ends in each task (BP4D codes a segment)
BP4D_LEAD, BP4D_TAIL = 2, 1
#: BP4D's quirks, reproduced: a task whose folder lacks some labelled frames' images
MISSING_IMAGES = ("M011", 2)


def bp4d_subject_ids(n):
    """The ids of ``n`` synthetic BP4D subjects, dealt from the three parts of its protocol in
    turn (F001, M011, F007, M007, F003, ...), so that any number of at least 3 fills all folds."""
    from featbench.core.splits import BP4D_PARTS

    order = [part[i] for i in range(max(map(len, BP4D_PARTS))) for part in BP4D_PARTS
             if i < len(part)]
    return order[:n]


def _bp4d_occ_text(intensity, uncoded):
    """The AU_OCC file of one task: header, then ``frame,labels`` from frame 1 + lead."""
    labels = intensity_labels(intensity)
    lines = [",".join(["0"] + [str(k) for k in BP4D_OCC_COLUMNS])]
    for i, row in enumerate(labels):
        cells = []
        for k in BP4D_OCC_COLUMNS:
            au = f"AU{k:02d}"
            if uncoded[i] or k >= 27:
                cells.append("9")   # not coded (and BP4D's AU27+ columns are all 9)
            else:
                cells.append(str(int(row[AU_INDEX[au]] >= 2)) if au in AU_INDEX else "0")
        lines.append(",".join([str(i + 1 + BP4D_LEAD)] + cells))
    return "\n".join(lines) + "\n"


def write_bp4d_subject(tmp_root, seed, index, subject, n_frames, difficulty, domain="a"):
    """Write one subject of the BP4D layout: per task, AU_OCC and AU_INT files and the images.

    Each task renders ``n_frames`` coded frames plus a few uncoded ones before and after (BP4D
    codes a segment of each task); some tasks have a stretch of frames not coded (9).
    """
    import cv2

    occ_dir = tmp_root / "AUCoding" / "AU_OCC"
    occ_dir.mkdir(parents=True, exist_ok=True)
    r = subject_rng(seed, index, 9)
    coded = 0
    for task in range(1, BP4D_TASKS + 1):
        n_total = BP4D_LEAD + n_frames + BP4D_TAIL
        video = SubjectVideo(seed, index, n_total, difficulty=difficulty, domain=domain, task=task,
                             rates=BP4D_TASK_RATES[task], extra=BP4D_EVENTS)
        inten = video.intensity[BP4D_LEAD:BP4D_LEAD + n_frames]
        uncoded = np.zeros(n_frames, bool)
        if r.random() < 0.3:  # a stretch the coders skipped
            length = max(1, int(n_frames * r.uniform(0.05, 0.2)))
            start = int(r.integers(0, max(1, n_frames - length)))
            uncoded[start:start + length] = True
        coded += int((~uncoded).sum())
        name = f"{subject}_T{task}"
        (occ_dir / f"{name}.csv").write_text(_bp4d_occ_text(inten, uncoded))
        for au in BP4D_INTENSITY_AUS:
            idir = tmp_root / "AUCoding" / "AU_INT" / au
            idir.mkdir(parents=True, exist_ok=True)
            values = intensity_labels(inten[:, AU_INDEX[au]])
            (idir / f"{name}_{au}.csv").write_text("".join(
                f"{i + 1 + BP4D_LEAD},{9 if uncoded[i] else int(v)}\n" for i, v in enumerate(values)))
        fdir = tmp_root / "2D+3D" / subject / f"T{task}"
        fdir.mkdir(parents=True)
        gone = {BP4D_LEAD + 1, BP4D_LEAD + 2} if (subject, task) == MISSING_IMAGES else set()
        for f, img, _ in video.frames():
            if f in gone:
                continue
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            (fdir / f"{f + 1:04d}.jpg").write_bytes(buf.tobytes())
    return {"frames": BP4D_TASKS * n_frames, "coded": coded}
