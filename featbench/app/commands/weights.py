"""``featbench weights``: the pretrained-weights cache — list, where, fetch, verify, import."""

from featbench.app.commands._common import print_json

DESCRIPTION = """\
Manage the pretrained weights featbench reads (torchvision's cache, $TORCH_HOME/hub/checkpoints;
timm's Hugging Face cache). --weights imagenet downloads a missing file on first use, verified
by its published hash; these commands do it ahead of time or without a network.

  list            every network's file: cached or not, size, source URL, hash, licence note
  where NAME      the path --model NAME --weights W reads
  fetch NAME...   download now (e.g. on a login node); --all: every registered network
  verify [NAME]   hash-check cached files against the registry, or a file without a published
                  hash against the sha256 pinned on its first use (default: the whole cache)
  import PATH...  bring files in from a file, folder or zip/wheel archive (air-gapped clusters):
                  each is recognised by name, hash-checked, copied into the cache

environment: FEATBENCH_WEIGHTS_MIRROR=http://host/prefix replaces the published host (same
paths, same hash checks); FEATBENCH_OFFLINE=1 / HF_HUB_OFFLINE=1 / --offline never connect;
FEATBENCH_CONNECT_TIMEOUT=S (default 10).
"""


def add_parser(subparsers):
    """Register ``featbench weights``."""
    import argparse

    p = subparsers.add_parser("weights", help="pretrained weights: list, where, fetch, verify, import",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("list", "where", "fetch", "verify", "import"),
                   help="what to do (see above)")
    p.add_argument("items", nargs="*", metavar="NAME|PATH",
                   help="network names (where, fetch, verify) or files / folders / archives (import)")
    p.add_argument("--weights", default=None, metavar="TAG",
                   help="which published weights of NAME: imagenet (default: the network's own), "
                        "or a torchvision enum name such as IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT")
    p.add_argument("--all", action="store_true",
                   help="fetch: every registered network's file (what --preset paper needs)")
    p.add_argument("--json", action="store_true", help="list: print a JSON list instead of the table")
    p.add_argument("--force", action="store_true",
                   help="import: take a file without a published hash although another one was "
                        "pinned here on first use (the new one is pinned instead)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args):
    from featbench.core.errors import UsageError

    needs = {"where": "a network name", "fetch": "network names (or --all)",
             "import": "files, folders or archives"}
    if args.action in needs and not (args.items or (args.action == "fetch" and args.all)):
        raise UsageError(f"featbench weights {args.action} needs {needs[args.action]}")
    return {"list": _list, "where": _where, "fetch": _fetch, "verify": _verify,
            "import": _import}[args.action](args)


def _list(args):
    from extract.cache import list_weights

    rows = list_weights()
    if args.json:
        print_json(rows)
        return 0
    cols = ("model", "tag", "file", "cached", "size_mb", "hash", "source", "licence")
    cells = [[("yes" if r[c] else "no") if c == "cached" else str(r[c] or "") for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols[:-1])]
    print("  ".join(c.ljust(w) for c, w in zip(cols[:-1], widths)) + "  licence")
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1])
    here = sum(r["cached"] for r in rows)
    print(f"{len(rows)} weights files, {here} cached; featbench weights fetch NAME downloads one, "
          "featbench weights import PATH brings files in offline")
    return 0


def _where(args):
    from extract.cache import where

    for name in args.items:
        path, exists = where(name, args.weights)
        print(f"{path}{'' if exists else '  (not cached)'}")
    return 0


def _fetch(args):
    from extract.cache import fetch_weights
    from extract.registry import list_specs

    names = args.items or [s.name for s in list_specs() if s.pretrained and s.kind == "torch"]
    outcomes = fetch_weights(names, args.weights, progress=not args.quiet)
    for o in outcomes:
        print(o.line())
    print(f"featbench weights fetch: {len(outcomes)} files here "
          f"({sum(o.status == 'downloaded' for o in outcomes)} downloaded)")
    return 0


def _verify(args):
    from extract.cache import verify_cache
    from featbench.core.errors import WeightsError

    outcomes = verify_cache(args.items, args.weights)
    for o in outcomes:
        print(o.line())
    bad = [o for o in outcomes if o.status in ("mismatch", "missing", "incomplete")]
    if bad:
        raise WeightsError(f"{len(bad)} of {len(outcomes)} files failed: "
                           + "; ".join(f"{o.path or o.name}: {o.status} {o.note}".strip() for o in bad))
    removed = sum(o.status == "removed" for o in outcomes)
    print(f"featbench weights verify: {len(outcomes) - removed} files checked, none failed"
          + (f"; {removed} leftover temporary files removed" if removed else ""))
    return 0


def _import(args):
    from extract.cache import import_weights
    from featbench.core.errors import WeightsError

    outcomes = import_weights(args.items, progress=not args.quiet, force=args.force)
    for o in outcomes:
        print(o.line())
    refused = [o for o in outcomes if o.status == "refused"]
    if refused:
        raise WeightsError(f"{len(refused)} of {len(outcomes)} weight files refused: "
                           + "; ".join(f"{o.name}: {o.note}" for o in refused))
    print(f"featbench weights import: {len(outcomes)} files imported")
    return 0
