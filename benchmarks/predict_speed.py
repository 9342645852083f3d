"""Frames/s of ``featbench predict`` on a 640x480 video against the sum of its parts measured alone.

    featbench run --preset quick --workspace /tmp/ws           # makes the runs (once)
    python benchmarks/predict_speed.py --workspace /tmp/ws --run best --frames 120

The video is written first: frames of the workspace's synthetic data set (one test subject),
letterboxed to 640 x 480 (or, without a data set, scikit-image's astronaut photo moving
a little). Then, on the same frames, in one process and interleaved ``--repeat`` times (best
round kept, as the machine is shared):

decode
    :func:`featbench.core.footage.iter_frames` alone.
detect
    dlib's detector + 68 landmarks + alignment of every decoded frame (the frames are decoded
    before the clock starts), on the same two threads predict uses.
encode
    the run's network(s) on the aligned faces and region crops, in predict's batches.
classify
    the run's scalers, classifiers and thresholds on those codes.
predict
    :func:`featbench.apply.predict.predict` end to end (writing its CSV).

It prints one JSON object and a Markdown table: frames/s of each, and ``predict / sum of parts``
(time ratio; < 1 means the overlap of decoding and detection with encoding wins time back).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_video(path, frames_wanted, workspace, dataset):
    """Write the 640 x 480 MJPG test video; return (path, where the pixels came from)."""
    import cv2

    from featbench.core.faces import open_video

    frames, origin = [], ""
    videos = sorted((Path(workspace) / "data" / dataset / "Videos_LeftCamera").glob("*.avi"))
    if videos:
        cap = open_video(videos[-1])
        while len(frames) < frames_wanted:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(bgr)
        cap.release()
        origin = str(videos[-1])
    if not frames:
        from skimage import data

        img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
        frames = [np.roll(img, int(12 * np.sin(k / 5)), axis=1) for k in range(frames_wanted)]
        origin = "skimage.data.astronaut"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
    for k in range(frames_wanted):
        f = frames[k % len(frames)]
        h, w = f.shape[:2]
        s = min(640 / w, 480 / h)
        small = cv2.resize(f, (int(w * s), int(h * s)), interpolation=cv2.INTER_LINEAR)
        canvas = np.zeros((480, 640, 3), np.uint8)
        y0, x0 = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
        canvas[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
        out.write(canvas)
    out.release()
    return path, origin


def _clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def one_round(video, args, model, encoders):
    from featbench.core import footage
    from featbench.core._background import ordered_map
    from featbench.apply.faces import detect_frame
    from featbench.apply.pipeline import DETECT_THREADS
    from featbench.apply.predict import predict
    from featbench.core.threads import use_torch_threads

    size = int(model.alignment.get("size") or 224)
    sources = footage.list_sources([video])
    t_decode, frames = _clock(lambda: list(footage.iter_frames(sources)))
    n = len(frames)

    def detect_all():
        return list(ordered_map(lambda f: detect_frame(f, detector=args.detector, all_faces=False,
                                                       size=size), frames, threads=DETECT_THREADS))

    t_detect, items = _clock(detect_all)
    faces = [f for it in items for f in it.faces]
    if not faces:
        raise SystemExit("no face found in the benchmark video: nothing to encode")
    imgs = np.stack([f.image for f in faces])
    boxes = np.stack([f.boxes for f in faces])

    from featbench.apply.encoders import encode_faces

    def encode():
        return encode_faces(model, encoders, imgs, boxes, batch_size=args.batch_size)

    use_torch_threads()  # the networks alone: the tool's choice for nothing else running

    t_encode, codes = _clock(encode)

    tracks = [(("bench", 0), it.frame.frame) for it in items for _ in it.faces]

    def classify():
        model.reset()
        for a in range(0, len(imgs), args.batch_size):
            model.score({k: v[a:a + args.batch_size] for k, v in codes.items()},
                        tracks=tracks[a:a + args.batch_size])

    t_classify, _ = _clock(classify)
    with tempfile.TemporaryDirectory() as tmp:
        t_predict, df = _clock(lambda: predict([video], run=args.run, workspace=args.workspace,
                                               dataset=args.dataset, out=Path(tmp) / "p.csv",
                                               detector=args.detector, device=args.device,
                                               batch_size=args.batch_size, progress=False))
    assert len(df) == n, (len(df), n)
    return {"frames": n, "faces": len(faces), "decode_s": t_decode, "detect_s": t_detect,
            "encode_s": t_encode, "classify_s": t_classify, "predict_s": t_predict}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", default=".", help="workspace holding the run (and data/<dataset>)")
    p.add_argument("--dataset", default="synth")
    p.add_argument("--run", default="best", help="run name or best (default)")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best is kept")
    p.add_argument("--detector", default="hog", choices=("hog", "cnn"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)

    from featbench.apply.encoders import open_encoders
    from featbench.apply.predict import load_model
    from featbench.apply.runmodel import resolve_run
    from featbench.core.workspace import Workspace

    ws = Workspace(args.workspace)
    args.run = resolve_run(ws, args.dataset, args.run)
    model = load_model(run=args.run, workspace=ws, dataset=args.dataset)
    encoders = open_encoders(model, device=args.device, workspace=ws)
    with tempfile.TemporaryDirectory() as tmp:
        video, origin = write_video(Path(tmp) / "bench.avi", args.frames, args.workspace, args.dataset)
        rounds = [one_round(video, args, model, encoders) for _ in range(max(1, args.repeat))]
    best = {k: min(r[k] for r in rounds) if k.endswith("_s") else rounds[0][k] for k in rounds[0]}
    parts = sum(best[k] for k in ("decode_s", "detect_s", "encode_s", "classify_s"))
    n = best["frames"]
    res = {"run": args.run, "describe": model.describe(), "video": "640x480", "pixels": origin,
           "detector": args.detector, "device": args.device, "rounds": len(rounds), **best,
           **{k.replace("_s", "_fps"): n / best[k] for k in best if k.endswith("_s")},
           "sum_of_parts_fps": n / parts, "predict_over_parts": best["predict_s"] / parts}
    print(json.dumps(res), flush=True)
    print(f"\n{model.describe()}, {n} frames 640x480 ({best['faces']} faces), best of {len(rounds)}")
    print("| part | frames/s |")
    print("| --- | --- |")
    for k in ("decode", "detect", "encode", "classify", "sum_of_parts", "predict"):
        print(f"| {k} | {res[k + '_fps']:.1f} |")
    print(f"predict time / sum of parts' times = {res['predict_over_parts']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
