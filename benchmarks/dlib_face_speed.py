"""dlib's face-recognition ResNet: dlib's own inference vs featbench's torch port, in one run.

Reads ``--frames`` aligned faces from a workspace's aligned-face cache (``featbench align``),
cuts the 150x150 chips once, and times, alternately for ``--repeat`` rounds (best kept):

- ``dlib_face_ref``: dlib's ``compute_face_descriptor`` (its own CPU path, one face at a time,
  split over worker processes as featbench's reference encoder does);
- ``dlib_face``: the same network converted to torch (``extract.dlib_net``), batched,
  channels-last (CUDA when present).

Prints frames/s of each, their ratio, and the largest difference between the two codes.

    python benchmarks/dlib_face_speed.py --workspace /tmp/ws --frames 512 --repeat 3
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=".")
    ap.add_argument("--dataset", default="synth")
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from extract.encoders import create_encoder
    from featbench.core.align import AlignedFaces
    from featbench.core.workspace import Workspace

    ws = Workspace(args.workspace)
    with AlignedFaces(ws.aligned_path(args.dataset)) as faces:
        rows = np.flatnonzero(faces.valid)[:args.frames]
        imgs = faces.read(rows)
    ref = create_encoder("dlib_face_ref")
    ours = create_encoder("dlib_face", device=args.device)
    chips = ref._chips(imgs)  # the same 150x150 chips for both

    def run(enc):
        out = []
        t = time.perf_counter()
        for a in range(0, len(chips), args.batch_size):
            out.append(enc(chips[a:a + args.batch_size]))
        if enc is ours and ours.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - t, np.concatenate(out)

    run(ours)  # warm-up: first-call allocations, cached weights
    best = {"dlib_face_ref": float("inf"), "dlib_face": float("inf")}
    for _ in range(args.repeat):
        t_ref, c_ref = run(ref)
        t_ours, c_ours = run(ours)
        best["dlib_face_ref"] = min(best["dlib_face_ref"], t_ref)
        best["dlib_face"] = min(best["dlib_face"], t_ours)
    ref.close()
    fps = {k: len(chips) / v for k, v in best.items()}
    print(f"{len(chips)} faces, best of {args.repeat}: dlib_face_ref (dlib, "
          f"{ref.processes} processes) {fps['dlib_face_ref']:.1f} frames/s, dlib_face (torch, "
          f"{ours.device}) {fps['dlib_face']:.1f} frames/s: {fps['dlib_face'] / fps['dlib_face_ref']:.2f}x; "
          f"max |difference| of the codes {np.abs(c_ours - c_ref).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
