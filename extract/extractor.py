"""Extraction of one network's codes: align once, pick the encoder, run the loop.

:func:`extract_features` aligns the data set once (``featbench.core.align.ensure_aligned``, cached),
builds the encoder and runs :func:`extract.loop.extract_aligned` over every region; launched by
``torchrun``, it hands this rank's shard to :mod:`extract.distributed` instead.
"""

from featbench.core.aus import REGIONS
from featbench.core.errors import UsageError, did_you_mean
from featbench.core.identity import WeightsId

from extract.distributed import extract_distributed, torchrun_env
from extract.loop import EncodeOptions, ExtractReport, extract_aligned
from featbench.core.align import ensure_aligned
from extract.encoders import TorchEncoder, create_encoder
from featbench.core.threads import use_torch_threads

__all__ = ["REGION_CHOICES", "parse_regions", "default_workers", "extract_features", "extract_aligned",
           "ExtractReport"]

#: --region choices; "all" is the full face and the three regions
REGION_CHOICES = ("full",) + tuple(REGIONS) + ("all",)


def parse_regions(region):
    """Return the regions ``--region`` names: ``all`` -> full + upper, middle, lower."""
    if region == "all":
        return ("full",) + tuple(REGIONS)
    if isinstance(region, (list, tuple)):
        return tuple(r for reg in region for r in parse_regions(reg))
    if region not in REGION_CHOICES:
        raise UsageError(did_you_mean(region, REGION_CHOICES, what="region",
                                      hint="choices: " + ", ".join(REGION_CHOICES)))
    return (region,)


def default_workers():
    """Reader threads by default: one, overlapping the forward pass (see the module docstring)."""
    return 1


def extract_features(table, workspace, model, *, region="full", weights=None, device="auto",
                     batch_size=64, workers=None, overwrite=False, float16=False,
                     progress=True, on_batch=None, report=False, name=None, input_size=None):
    """Extract ``model``'s codes of every aligned face of ``table`` into the workspace.

    Parameters
    ----------
    table : FrameTable
    workspace : Workspace
    model : str
        A registry name, ``timm:<name>`` or ``tv:<name>``.
    region : {"full", "upper", "middle", "lower", "all"} or sequence of them
    weights : str, optional
        ``imagenet`` | ``random[:SEED]`` | PATH (default: the network's default).
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Faces per forward pass.
    workers : int, optional
        Background reader threads (0: read inline; default 1).
    overwrite : bool
        Replace a feature file made with other weights or frames instead of refusing.
    float16 : bool
        Store codes as float16 (half the disk; classifiers read them back as float32).
    progress : bool
        Show a progress bar (frames/s) on stderr.
    on_batch : callable, optional
        ``on_batch(region, rows_done)`` after each written batch (tests interrupt here).
    report : bool
        Return an :class:`ExtractReport` instead of the path.
    name : str, optional
        Store the codes as ``data/features/<dataset>/<name>.h5`` (default: the model's name;
        ``<model>-ft`` for the weights of a ``featbench finetune`` run, so that the fine-tuned
        net's codes sit beside the frozen ones instead of replacing them).
    input_size : int, optional
        Face side fed to the network (default: the network's own, or the size a
        ``featbench finetune`` run's weights were trained at); recorded in the file.

    Returns
    -------
    Path
        ``workspace.features_path(table.dataset, model)`` (or the report).

    Raises
    ------
    UsageError, WeightsError, StoreError
    """

    regions = parse_regions(region)
    batch_size = _positive(batch_size, "--batch-size")
    workers = default_workers() if workers is None else int(workers)
    opt = EncodeOptions(regions=regions, batch_size=batch_size, workers=workers,
                        overwrite=overwrite, float16=float16, progress=progress, on_batch=on_batch)
    if torchrun_env() is not None:  # launched by torchrun: this rank's shard, rank 0 joins
        rep = extract_distributed(table, workspace, model, opt, weights=weights, device=device)
        return rep if report else rep.path
    encoder = create_encoder(model, weights=weights, device=device, input_size=input_size)
    if isinstance(encoder, TorchEncoder) and encoder.device == "cpu":
        use_torch_threads(helpers=workers)  # the cores free now, less the reader threads
    aligned_path = ensure_aligned(table, workspace, progress=progress)
    if name is None and WeightsId.parse(encoder.weights_id).kind == "finetuned":
        name = f"{model}-ft"
    out = workspace.features_path(table.dataset, name or model)
    rep = extract_aligned(aligned_path, out, encoder, opt, dataset=table.dataset)
    return rep if report else rep.path


def _positive(value, flag):
    value = int(value)
    if value < 1:
        raise UsageError(f"{flag} must be at least 1 (got {value})")
    return value


