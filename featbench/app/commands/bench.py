"""``featbench bench extract``: featbench's extraction vs the forward pass alone vs a hand-written loop."""

from featbench.app.commands._common import add_dataset_args, load_table, print_json


def add_parser(subparsers):
    """Register ``featbench bench``."""
    p = subparsers.add_parser("bench", help="measure speed (featbench bench extract | finetune)",
                              description="Speed measurements.")
    sub = p.add_subparsers(dest="bench", metavar="WHAT")
    sub.required = True
    e = sub.add_parser(
        "extract", help="frames/s of featbench, the forward pass alone, and a hand-written loop",
        description="In one run, on the same frames and network: featbench's extraction from "
                    "the aligned-face cache into HDF5 (featbench_fps), the network's forward "
                    "pass alone on preloaded tensors (forward_fps, the limit), and the loop a "
                    "user would write (OpenCV video reads, per-frame alignment, per-image "
                    "torchvision transforms, fp32 forward in batches of 32, h5py writes; "
                    "loop_fps). Prints the three and their ratios.")
    e.add_argument("--model", required=True, metavar="NAME", help="network (featbench models)")
    add_dataset_args(e)
    e.add_argument("--frames", type=int, default=256, metavar="N",
                   help="frames to process in each measurement (default: 256)")
    e.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="featbench's and the forward's batch size (default: 64; the loop uses 32)")
    e.add_argument("--weights", default=None, metavar="W",
                   help="weights (speed does not depend on them; default: random:0 for CNNs)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the network runs (default: auto)")
    e.add_argument("--workers", type=int, default=None, metavar="N",
                   help="featbench's reader threads (default: the extractor's)")
    e.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="rounds of the three measurements, best of each kept (default: 1)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_run_extract)
    f = sub.add_parser(
        "finetune", help="training images/s of featbench's loop vs a plain PyTorch loop",
        description="In one run, on the same network, batches and faces (random uint8, in "
                    "memory) and the same SGD settings: featbench's training loop (classify."
                    "training.fit: channels-last, set_to_none, no per-step host sync, AMP on "
                    "CUDA) against the plain PyTorch loop (NCHW, loss.item() every step, fp32). "
                    "Prints both images/s and their ratio.")
    f.add_argument("--model", default="cnn_f", metavar="NAME", help="network (default: cnn_f)")
    f.add_argument("--input-size", type=int, default=None, metavar="S",
                   help="face side (default: the network's own)")
    f.add_argument("--batch-size", type=int, default=32, metavar="N", help="default: 32")
    f.add_argument("--steps", type=int, default=8, metavar="N", help="batches per timed epoch (default: 8)")
    f.add_argument("--repeat", type=int, default=3, metavar="R",
                   help="alternating rounds, the best of each loop kept (default: 3)")
    f.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=_run_finetune)


def _run_finetune(args):
    from classify.ft_bench import bench_finetune, format_bench

    res = bench_finetune(args.model, input_size=args.input_size, batch_size=args.batch_size,
                         steps=args.steps, repeat=args.repeat, device=args.device)
    print_json(res) if args.json else print(format_bench(res))
    return 0


def _run_extract(args):
    from extract.bench import bench_extract, format_bench
    from extract.registry import get_spec

    get_spec(args.model)
    table = load_table(args)
    res = bench_extract(table, args.model, frames=args.frames, batch_size=args.batch_size,
                        weights=args.weights, device=args.device, workers=args.workers,
                        repeat=args.repeat)
    print_json(res) if args.json else print(format_bench(res))
    return 0
