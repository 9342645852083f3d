"""``featbench extract``: one network's fc-layer codes of every aligned face, into HDF5."""

from featbench.app.commands._common import add_dataset_args, load_table, workspace_of


def add_parser(subparsers):
    """Register ``featbench extract``."""
    p = subparsers.add_parser(
        "extract", help="extract a network's codes of the aligned faces (data/features/<ds>/<model>.h5)",
        description="Align the data set's faces once (cached), run a network over every face "
                    "(or face region) and store its codes in data/features/<dataset>/<model>.h5, "
                    "with the model, layer, weights identity and preprocessing. An interrupted "
                    "run resumes where it stopped; a file made with other weights or frames is "
                    "refused (--overwrite replaces it). Under torchrun (torchrun "
                    "--nproc-per-node N -m featbench extract ...) each rank encodes its share "
                    "of the frames into its own shard file and rank 0 joins them.")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="network: a name from featbench models, timm:<name> or tv:<name>")
    add_dataset_args(p)
    p.add_argument("--region", default="full", choices=("full", "upper", "middle", "lower", "all"),
                   help="face region(s) to encode; all = full + upper + middle + lower "
                        "(default: full)")
    p.add_argument("--weights", default=None, metavar="W",
                   help="imagenet (the network's published weights: from the torchvision / timm "
                        "cache, downloaded and hash-checked on first use unless --offline), a "
                        "torchvision enum name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT), "
                        "random[:SEED] (seeded random init), or PATH to a state dict / "
                        "vgg_face_dag.pth / MatConvNet .mat (default: the network's own, "
                        "see featbench models and featbench weights list)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the network runs (default: auto = cuda when present)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="faces per forward pass (default: 64)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="background reader threads overlapping the forward pass; 0 reads inline "
                        "(default: 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing feature file made with other weights or frames")
    p.add_argument("--float16", action="store_true",
                   help="store codes as float16 (half the disk; read back as float32)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="store the codes as data/features/<dataset>/<NAME>.h5 and classify them "
                        "with --model NAME (default: the model's name; <model>-ft for the "
                        "model.safetensors of a featbench finetune run)")
    p.add_argument("--input-size", type=int, default=None, metavar="S",
                   help="face side fed to a CNN (default: the network's own, e.g. 224; for a "
                        "featbench finetune model.safetensors, the size it was trained at)")
    p.add_argument("--dtype", choices=("float32", "float16"), default=None,
                   help="storage type of the codes; --dtype float16 = --float16 (default: "
                        "float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run, interrupted="what was written so far is kept and a rerun resumes")


def _run(args):
    from extract.extractor import extract_features, parse_regions
    from extract.registry import get_spec
    from extract.weights import parse_weights

    spec = get_spec(args.model)  # bad names and weights fail before any data is read
    parse_weights(args.weights, spec)
    parse_regions(args.region)
    table = load_table(args)
    rep = extract_features(table, workspace_of(args), args.model, region=args.region,
                           weights=args.weights, device=args.device, batch_size=args.batch_size,
                           workers=args.workers, overwrite=args.overwrite,
                           float16=args.float16 or args.dtype == "float16",
                           progress=not args.quiet, report=True, name=args.name,
                           input_size=args.input_size)
    from extract.distributed import is_main_process

    if is_main_process():  # under torchrun, rank 0 speaks for all ranks
        print(rep.summary())
    return 0
