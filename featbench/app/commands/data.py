"""``featbench data synth|info|show``: make, describe and look at a data set."""

from featbench.app.commands._common import (add_dataset_args, check_sheet_out, load_table, print_json,
                                             workspace_of)


def add_parser(sub):
    p = sub.add_parser("data", help="make, describe and look at data sets",
                       description="Make the embedded synthetic data set, count a data set's "
                                   "frames and labels, or draw a contact sheet of it.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    s = dsub.add_parser("synth", help="generate the embedded synthetic data set",
                        description="Generate a synthetic face-video data set with known AU labels, "
                                    "deterministic for a seed (same seed, same bytes).")
    s.add_argument("--root", default=None, metavar="DIR",
                   help="where to write it (default: data/<name> in the workspace, the built-in "
                        "name of the layout and domain: synth, synth-affwild2, synth-expression, "
                        "synth-bp4d, synth-b, synth-bp4d-b)")
    s.add_argument("--subjects", type=int, default=None, metavar="N",
                   help="subjects (default: 27 as DISFA; bp4d: 41 as BP4D)")
    s.add_argument("--frames", type=int, default=None, metavar="N",
                   help="frames per subject, video or (bp4d) task (default: the layout's: disfa "
                        "240, affwild2 120, bp4d 20 per task); for the expression layout, takes "
                        "per expression and view (default 1: each take is about 30 images)")
    s.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    s.add_argument("--layout", choices=("disfa", "affwild2", "expression", "bp4d"), default="disfa",
                   help="on-disk layout: DISFA's (default), ABAW3's AU track, a posed-expression "
                        "set, or BP4D-Spontaneous's (8 tasks per subject, AU_OCC / AU_INT files)")
    s.add_argument("--domain", default="a", metavar="D",
                   help="the renderer's domain: a (default; every built-in set) or b, another "
                        "studio, camera and pool of people (side light, camera off to a side, "
                        "smaller and softer faces, other identities): train on one, test on "
                        "the other to see a cross-domain drop")
    s.add_argument("--force", action="store_true", help="replace an existing data set at --root")
    s.set_defaults(func=_synth)

    i = dsub.add_parser("info", help="subjects, frames, positives per AU and what was skipped",
                        description="Read a data set and print its subjects, labelled frames, "
                                    "positives per AU, frames per split of the protocol, and what "
                                    "was skipped and why.")
    add_dataset_args(i)
    i.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    i.set_defaults(func=_info)

    w = dsub.add_parser("show", help="contact sheet (PNG) of sample frames with their active AUs")
    add_dataset_args(w)
    w.add_argument("--out", default=None, metavar="FILE.png",
                   help="output PNG (default: results/<dataset>/contact_sheet.png)")
    w.add_argument("--n", type=int, default=24, metavar="N", help="frames on the sheet (default: 24)")
    w.add_argument("--seed", type=int, default=0, metavar="S", help="which frames are drawn (default: 0)")
    w.set_defaults(func=_show)


def _synth(args):
    import json
    import time

    from featbench.core.synth import INFO_FILE

    from pathlib import Path

    from featbench.core.datasets import synth_name
    from featbench.core.errors import UsageError
    from featbench.core.synth import generate_dataset, get_domain

    get_domain(args.domain)
    name = synth_name(args.layout, args.domain)
    if args.root is None and name is None:
        raise UsageError(f"--layout {args.layout} --domain {args.domain} has no built-in name: "
                         "pass --root DIR")
    root = Path(args.root or workspace_of(args).data_dir(name))
    t0 = time.perf_counter()
    # --force replaces only a folder the generator made, and only once the new set is complete
    generate_dataset(root, layout=args.layout, subjects=args.subjects, frames=args.frames,
                     seed=args.seed, overwrite=args.force, domain=args.domain)
    info = json.loads((root / INFO_FILE).read_text())
    print(f"wrote {args.layout}-layout synthetic data set ({info['subjects']} subjects, domain "
          f"{args.domain}, seed {args.seed}) to {root} in {time.perf_counter() - t0:.1f} s"
          + (f"; read it with --dataset {name}" + (f" --root {root}" if args.root else "")
             if name else f"; read it with --dataset {args.layout} --root {root}"))


def _info(args):
    from featbench.core.errors import UsageError
    from featbench.core.splits import default_protocol, make_splits

    from featbench.core.datasets import damaged_landmark_files

    table = load_table(args)
    info = table.summary()
    info["damaged_landmark_files"] = damaged_landmark_files(table)
    try:
        splits = make_splits(table, default_protocol(table))
        labelled = table.labelled_mask()
        # one split (DISFA's 12/6/9, an own split), or each fold of BP4D's 3-fold default
        folds = [{part: {"subjects": len(getattr(split, part)),
                         "frames": int((split.mask(table, part) & labelled).sum())}
                  for part in ("train", "validation", "test")} for split in splits]
        info["split"] = folds[0]
        if len(folds) > 1:
            info["folds"] = {split.name: fold for split, fold in zip(splits, folds)}
    except UsageError:
        pass
    if args.json:
        print_json(info)
        return 0
    print(f"{info['dataset']} at {info['root']}")
    print(f"  subjects   {len(info['subjects'])}: {' '.join(info['subjects'][:12])}"
          f"{' ...' if len(info['subjects']) > 12 else ''}")
    print(f"  frames     {info['frames']} with labels ({info['frames_total']} in the table, "
          f"{info['videos']} videos)")
    for name, fold in (info.get("folds") or {"split": info.get("split")}).items():
        if fold:
            print(f"  {name:<10} " + ", ".join(f"{k} {v['subjects']} subjects / {v['frames']} frames"
                                              for k, v in fold.items()))
    if info["positives"]:
        print("  positives  " + "  ".join(f"{au} {n}" for au, n in info["positives"].items()))
    for note, value in table.notes.items():
        print(f"  {note.replace('_', ' ')}  {value}")
    if info["skipped"]:
        for reason, n in info["skipped"].items():
            print(f"  skipped    {n:>7}  {reason}")
    else:
        print("  skipped    nothing")
    for path in info["damaged_landmark_files"]:
        print(f"  damaged    {path}: not a readable landmark file (its frame counts as without "
              "landmarks)")
    return 0


def _show(args):
    from featbench.core.synth import contact_sheet

    table = load_table(args)
    out = args.out or workspace_of(args).results_dir(args.dataset) / "contact_sheet.png"
    check_sheet_out(out, table, command="data show")
    path = contact_sheet(table, out, n=args.n, seed=args.seed)
    print(f"wrote {path}")
    return 0
