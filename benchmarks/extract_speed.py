"""Extraction speed of several networks: featbench vs forward alone vs a hand-written loop.

Runs :func:`extract.bench.bench_extract` (what ``featbench bench extract`` runs) for each model
and prints one JSON object per line, then a Markdown table::

    python benchmarks/extract_speed.py --workspace /tmp/ws --models alexnet,resnet50 --frames 600

The data set is the synthetic one of the workspace (generated on first use). Frames/s depend
on everything else the machine runs: use ``--repeat`` (best of R interleaved rounds) on a
shared machine, and compare numbers from one run only.
"""

import argparse
import json
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", default=".", help="workspace holding data/synth")
    p.add_argument("--dataset", default="synth")
    p.add_argument("--models", default="hog,dlib_face,alexnet,cnn_f,resnet50",
                   help="comma-separated registry names")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from extract.bench import bench_extract
    from featbench.core.datasets import load_dataset
    from featbench.core.workspace import Workspace

    table = load_dataset(args.dataset, workspace=Workspace(args.workspace), generate=True)
    rows = []
    for model in args.models.split(","):
        res = bench_extract(table, model, frames=args.frames, batch_size=args.batch_size,
                            device=args.device, repeat=args.repeat)
        print(json.dumps(res), flush=True)
        rows.append(res)
    print("\n| model | device | frames | featbench fps | forward fps | loop fps | "
          "featbench/forward | featbench/loop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['device']} | {r['frames']} | {r['featbench_fps']:.1f} | "
              f"{r['forward_fps']:.1f} | {r['loop_fps']:.1f} | {r['featbench_vs_forward']:.3f} | "
              f"{r['featbench_vs_loop']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
