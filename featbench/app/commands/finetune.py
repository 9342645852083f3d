"""``featbench finetune``: fine-tune a CNN for the AUs (Method A's fine-tuned networks)."""

from featbench.app.commands._common import add_dataset_args, load_table, workspace_of


def add_parser(subparsers):
    """Register ``featbench finetune`` (its flags, so scripts can be written against them)."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune a CNN for the AUs (results/<ds>/<model>__<region>__ft.csv)",
        description="Fine-tune a registry CNN for AU occurrence, as Method A fine-tunes CNN-F: conv "
                    "weights from --weights, fully connected layers re-initialised, the 1000-way "
                    "classifier replaced by a 2-way output per AU network (per-au, the paper) or one "
                    "logit per AU (multilabel). Balanced batches from the training subjects, the "
                    "epoch chosen on the validation subjects, a checkpoint per epoch (a rerun "
                    "resumes). Writes the run's CSV, summary row (clf = ft), predictions and the "
                    "trained network under results/<ds>/models/<run>/; featbench extract --weights "
                    "results/<ds>/models/<run>/model.safetensors extracts its codes.")
    p.add_argument("--model", default="cnn_f", metavar="NAME",
                   help="network: cnn_f (the paper's), alexnet, vgg_face, resnet50, tv:<name>, "
                        "timm:<name>... (featbench models lists them; default: cnn_f)")
    p.add_argument("--weights", default=None, metavar="W",
                   help="where the conv weights come from: imagenet (the published ones, from the "
                        "local cache), IMAGENET1K_V1, random[:SEED] (seeded random init: a control, "
                        "labelled as such), or PATH to a state dict (default: the network's own)")
    p.add_argument("--reinit", default="fc", metavar="fc|fc6-fc7|head",
                   help="fully connected layers to re-initialise: fc = all of them (the paper's "
                        "default), fc6-fc7 = fc6 and fc7 (the paper's variant), head = none, only "
                        "the new output layer is fresh (default: fc)")
    p.add_argument("--train-from", default=None, metavar="LAYER",
                   help="freeze every layer below LAYER (conv1..conv5, fc6, fc7, fc8 for CNN-F / "
                        "AlexNet / VGG, or any module name such as layer3); default: train all")
    p.add_argument("--head", default="per-au", metavar="per-au|multilabel",
                   help="per-au = one network per AU with 2 outputs (the paper); multilabel = one "
                        "network with one logit per AU, 12x cheaper (default: per-au)")
    p.add_argument("--region", default="full", metavar="full|upper|middle|lower|auto",
                   help="face region the network sees; auto = each AU its own region (default: full)")
    p.add_argument("--protocol", default="paper", metavar="P",
                   help="paper (12/6/9 subjects), literature (3 folds), kfold:K or own; on BP4D "
                        "paper and literature are its 3 subject folds; on a joined --dataset "
                        "X+Y, cross (train on X, test on Y) or within (default: paper)")
    p.add_argument("--aus", default=None, metavar="AU01,AU02",
                   help="only these AUs (default: the protocol's)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="at most N epochs (default: 10)")
    p.add_argument("--patience", type=int, default=3, metavar="N",
                   help="stop after N epochs without a better validation F1 (default: 3)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="faces per batch (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, metavar="X", help="SGD learning rate (default: 1e-3)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                   help="SGD with momentum 0.9 (the paper's) or AdamW (default: sgd)")
    p.add_argument("--input-size", type=int, default=None, metavar="S",
                   help="face side fed to the network (default: the network's own, e.g. 224); a "
                        "smaller one trains faster and needs --reinit fc for CNN-F")
    p.add_argument("--no-augment", action="store_true",
                   help="no flip / shift / brightness augmentation of the training faces")
    p.add_argument("--tune-threshold", action="store_true",
                   help="choose each AU's threshold on the validation subjects (default: 0)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help="where it trains (default: auto = cuda when present; AMP there)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds everything (default: 0)")
    p.add_argument("--task", default="occurrence", metavar="occurrence|intensity",
                   help="occurrence (present / absent: BCE, F1) or intensity (a regression head on "
                        "the 0-5 intensities: MSE, the epoch chosen by validation ICC, outputs "
                        "clipped to 0-5; run-name tag intensity), or any task registered in Python "
                        "(classify.task.register_task) (default: occurrence)")
    p.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="train the networks (one per AU and fold) on the Dask cluster at ADDR "
                        "(tcp://HOST:PORT; default: $DASK_SCHEDULER_ADDRESS, else this machine); "
                        "the workers need the workspace on a shared file system. Needs pip "
                        "install 'featbench[dask]'. Under torchrun --nproc-per-node N each rank "
                        "trains a share and rank 0 writes the run")
    p.add_argument("--tag", default=None, metavar="TEXT",
                   help="an extra run-name tag (letters and digits), to keep runs apart")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataset_args(p)
    p.set_defaults(func=_run, interrupted="what was written so far is kept and a rerun resumes")


def _run(args):
    from classify.finetune import FinetuneConfig, check_network, finetune_run, format_result
    from classify.task import get_task

    config = FinetuneConfig(
        model=args.model, weights=args.weights, reinit=args.reinit, train_from=args.train_from,
        head=args.head, region=args.region, protocol=args.protocol, aus=args.aus,
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer,
        input_size=args.input_size, augment=not args.no_augment,
        tune_threshold=args.tune_threshold, device=args.device, seed=args.seed, tag=args.tag)
    task = get_task(args.task)  # any registered task
    task.refuse_class_flags([("--tune-threshold", args.tune_threshold)], "the network")
    check_network(config)  # weights, layers and sizes fail before any data is read
    if args.scheduler:
        from classify.scale import probe_scheduler

        probe_scheduler(args.scheduler)
    table = load_table(args)
    task.check_table(table)
    result = finetune_run(workspace_of(args), args.dataset, config, table=table,
                          progress=not args.quiet, task=task, scheduler=args.scheduler)
    if result is not None:  # None: a torchrun rank other than 0 (rank 0 writes and prints)
        print(format_result(result))
    return 0
