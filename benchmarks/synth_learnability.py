"""Is the synthetic DISFA-layout set learnable but not trivial, with each AU in its own region?

Aligns every frame from its landmarks (featbench.core.faces.align_face, 128 x 128), computes HOG of
the whole face and of the upper and lower region boxes (featbench.core.faces.region_boxes), trains a
linear SVM per AU (occurrence = intensity >= 2) on the paper split's 12 training subjects
(balanced: all positives plus as many random negatives), and scores F1 on its 9 test subjects.

Prints per-AU F1 for full / upper / lower, the all-positive baseline 2p / (1 + p), and the two
checks of issue 3: mean F1 well above the baseline and well below 1; upper-face AUs (1, 2, 4, 5,
6) better with upper-region HOG than lower, lower-face AUs (12, 15, 17, 20, 25, 26) the reverse.

    python benchmarks/synth_learnability.py --root data/synth
"""

import argparse
import sys
import time

import numpy as np

UPPER_AUS = ("AU01", "AU02", "AU04", "AU05", "AU06")
LOWER_AUS = ("AU12", "AU15", "AU17", "AU20", "AU25", "AU26")


def hog_codes(table, landmarks, *, size=128):
    """Return {"full", "upper", "lower"}: (frames, dims) HOG codes, and the mask of usable frames."""
    import cv2
    from skimage.feature import hog

    from featbench.core.faces import align_face, iter_frames, region_boxes, transform_points

    feats = {"full": [], "upper": [], "lower": []}
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    rows = np.flatnonzero(ok)
    kw = dict(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True)
    for _, rgb in iter_frames(table, rows):
        i = rows[len(feats["full"])]
        face, M = align_face(rgb, landmarks[i], size=size)
        gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        boxes = region_boxes(transform_points(landmarks[i], M), image_size=size)
        feats["full"].append(hog(gray, **kw))
        for name, (x0, y0, x1, y1) in zip(("upper", "lower"), (boxes[0], boxes[2])):
            crop = cv2.resize(gray[y0:y1, x0:x1], (size, size // 2), interpolation=cv2.INTER_AREA)
            feats[name].append(hog(crop, **kw))
    return {k: np.asarray(v, np.float32) for k, v in feats.items()}, rows


def f1_score(y, p):
    tp = int(((y == 1) & (p == 1)).sum())
    fp = int(((y == 0) & (p == 1)).sum())
    fn = int(((y == 1) & (p == 0)).sum())
    return float("nan") if tp + fn == 0 else 2 * tp / max(1, 2 * tp + fp + fn)


def svm_f1(X, y, train, test, seed):
    """Balanced linear SVM (standardised features) trained on ``train`` rows, F1 on ``test``."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)
    pos, neg = train[y[train] == 1], train[y[train] == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg = rng.choice(neg, min(len(neg), len(pos)), replace=False)
    idx = np.concatenate([pos, neg])
    clf = make_pipeline(StandardScaler(), LinearSVC(C=1e-3, max_iter=5000))
    clf.fit(X[idx], y[idx])
    return f1_score(y[test], clf.predict(X[test]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/synth", help="synthetic DISFA-layout folder (generated if missing)")
    ap.add_argument("--seed", type=int, default=0, help="split and negative sampling seed")
    args = ap.parse_args(argv)

    from featbench.core.aus import DISFA_AUS
    from featbench.core.datasets import load_dataset, load_landmarks
    from featbench.core.splits import make_splits

    t0 = time.perf_counter()
    table = load_dataset("synth", root=args.root, generate=True, progress=False)
    landmarks = load_landmarks(table)
    codes, rows = hog_codes(table, landmarks)
    sub = table.frames["subject"].to_numpy()[rows]
    split = make_splits(table, "paper", seed=args.seed)[0]
    train = np.flatnonzero(np.isin(sub, split.train))
    test = np.flatnonzero(np.isin(sub, split.test))
    labels = table.labels(DISFA_AUS)[rows]
    print(f"{len(rows)} frames ({len(train)} train from {len(split.train)} subjects, {len(test)} test "
          f"from {len(split.test)}), HOG dims full {codes['full'].shape[1]}, half {codes['upper'].shape[1]}; "
          f"features in {time.perf_counter() - t0:.0f} s")
    print(f"{'AU':6}{'test+':>6}{'base':>7}{'full':>7}{'upper':>7}{'lower':>7}")
    res = {}
    for j, au in enumerate(DISFA_AUS):
        y = labels[:, j].astype(int)
        p = (y[test] == 1).mean()
        base = 2 * p / (1 + p)
        res[au] = [base] + [svm_f1(codes[r], y, train, test, args.seed) for r in ("full", "upper", "lower")]
        print(f"{au:6}{int((y[test] == 1).sum()):>6}" + "".join(f"{v:7.3f}" for v in res[au]))
    m = np.nanmean(np.array(list(res.values())), axis=0)
    print(f"{'mean':6}{'':>6}" + "".join(f"{v:7.3f}" for v in m))
    up_ok = [au for au in UPPER_AUS if res[au][2] > res[au][3]]
    lo_ok = [au for au in LOWER_AUS if res[au][3] > res[au][2]]
    checks = {
        "mean F1 (full) well above the all-positive baseline (+0.15)": m[1] > m[0] + 0.15,
        "mean F1 (full) well below 1 (< 0.85)": m[1] < 0.85,
        f"upper-face AUs better with upper HOG: {len(up_ok)}/{len(UPPER_AUS)}": len(up_ok) == len(UPPER_AUS),
        f"lower-face AUs better with lower HOG: {len(lo_ok)}/{len(LOWER_AUS)}": len(lo_ok) == len(LOWER_AUS),
    }
    for text, good in checks.items():
        print(f"{'PASS' if good else 'FAIL'}  {text}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
