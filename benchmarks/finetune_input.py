"""Faces/s of featbench finetune's input pipeline alone: read, crop, resize and augment.

On a GPU this, not the network, bounds a fine-tuning epoch (README, "On a GPU"). Reads shuffled
training-size batches from a workspace's aligned-face cache the way ``featbench finetune`` does
(:class:`featbench.core.facesource.FaceSource`: read, crop, resize, augment, read ahead), for
each number of reader threads, alternating rounds.

    python benchmarks/finetune_input.py --workspace WS [--size 224] [--faces 1536] [--workers 1 2 4]
"""

import argparse
import time

import numpy as np

from featbench.core.facesource import FaceInput, FaceSource, draw_augmentation, reader_threads
from featbench.core.workspace import Workspace


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--dataset", default="synth")
    ap.add_argument("--size", type=int, default=224, help="network input side (default: 224)")
    ap.add_argument("--region", default="full")
    ap.add_argument("--faces", type=int, default=1536, help="faces per round (default: 1536)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    source = FaceSource(Workspace(args.workspace).aligned_path(args.dataset),
                        FaceInput(args.region, args.size, resize_full=True))
    rng = np.random.default_rng(0)
    rows = rng.permutation(np.flatnonzero(source.faces.valid))[:args.faces]
    aug = draw_augmentation(rng, len(rows), args.size)
    bs = args.batch_size
    best = {w: 0.0 for w in args.workers}
    for _ in range(args.repeat):
        for w in args.workers:
            t0 = time.perf_counter()
            n = sum(len(x) for _, _, x in source.batches(rows, bs, aug=aug, threads=w))
            best[w] = max(best[w], n / (time.perf_counter() - t0))
    print(f"{len(rows)} faces at {args.size} px, batch {bs}, best of {args.repeat} "
          f"(finetune's default here: {reader_threads()} threads)")
    for w, fps in best.items():
        print(f"  {w} reader thread(s): {fps:8.1f} faces/s   ({fps / best[args.workers[0]]:.2f}x)")


if __name__ == "__main__":
    main()
