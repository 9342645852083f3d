"""``featbench models``: the network zoo, and whether each network's weights are here now."""

from featbench.app.commands._common import print_json


def add_parser(subparsers):
    """Register ``featbench models``."""
    p = subparsers.add_parser(
        "models", help="list the networks: code layer, dims, input size, weights status",
        description="List every registered network: its family, the layer whose output is the "
                    "code, the code size, the input size, and whether its pretrained weights "
                    "are available on this machine now (cached / not cached (file) / built-in / "
                    "n/a). Any timm model is also available as timm:<name>, any torchvision "
                    "classification model as tv:<name>.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of objects (name, family, layer, dims, input_size, "
                        "weights_status, ...) instead of the table")
    p.set_defaults(func=_run)


def _run(args):
    from extract.registry import list_specs
    from extract.weights import weights_status

    rows = [dict(spec.to_dict(), weights_status=weights_status(spec)) for spec in list_specs()]
    if args.json:
        print_json(rows)
        return 0
    cols = (("name", "name"), ("family", "family"), ("layer", "layer"), ("dims", "dims"),
            ("input", "input_size"), ("weights here", "weights_status"), ("default", "default_weights"))
    cells = [[str(r[key]) for _, key in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
    print("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip())
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
    print(f"{len(rows)} networks; also timm:<name> and tv:<name>. Pretrained files are downloaded "
          "on first use; featbench weights list / fetch / import manage them.")
    return 0
