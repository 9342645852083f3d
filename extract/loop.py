"""The extraction loop: an aligned-face cache and an encoder in, one feature file out.

:func:`extract_aligned` reads the aligned uint8 faces of each region in row-contiguous batches,
runs the encoder (preprocessing fused into the network's forward, ``torch.inference_mode``,
channels-last, bf16 autocast on CUDA) and writes each batch to the HDF5 store, marking progress
so that an interrupted run resumes where it stopped. :mod:`extract.extractor` (one process) and
:mod:`extract.distributed` (a torchrun rank) both call it.

Why the loop is shaped this way (measured on the 2-core CPU this project targets): the forward
pass dominates; reading a batch of lzf-compressed faces costs a few percent of it. The next
batch is read in a background thread while the network runs (h5py and numpy hold the GIL only
briefly; torch's kernels release it), so reading overlaps the forward instead of adding to it.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench.core import interrupt
from featbench.core.align import AlignedFaces
from featbench.core.facesource import FaceInput, FaceSource

from extract.store import StoreIdentity, is_complete, open_store


@dataclass
class ExtractReport:
    """What one :func:`extract_features` call did.

    Attributes
    ----------
    path : Path
        The feature file.
    model, weights : str
    dims : int
    frames : int
        Rows of the file (frames with a face).
    computed : dict of str -> int
        Rows computed by this call per region (0 when already complete).
    seconds : float
        Time spent encoding and writing (alignment excluded).
    """

    path: Path
    model: str
    weights: str
    dims: int
    frames: int
    computed: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def fps(self):
        n = sum(self.computed.values())
        return n / self.seconds if self.seconds > 0 and n else float("nan")

    def summary(self):
        """The one-line summary ``featbench extract`` prints."""
        n = sum(self.computed.values())
        regions = ",".join(self.computed)
        if not n:
            return (f"{self.model} ({self.weights}): {self.frames} frames x {self.dims} dims "
                    f"[{regions}] already extracted -> {self.path}")
        return (f"{self.model} ({self.weights}): {self.frames} frames x {self.dims} dims "
                f"[{regions}], {n} computed at {self.fps:.1f} frames/s -> {self.path}")


@dataclass(frozen=True)
class EncodeOptions:
    """How an extraction writes its codes: the regions, faces per forward pass, reader threads
    (``workers`` batches read ahead; 0: inline), replace a file of another identity
    (``overwrite``), store float16, a progress bar, and ``on_batch(region, rows_done)`` after
    each written batch (as :func:`~extract.extractor.extract_features`'s flags)."""

    regions: tuple = ("full",)
    batch_size: int = 64
    workers: int = 1
    overwrite: bool = False
    float16: bool = False
    progress: bool = True
    on_batch: object = None


def extract_aligned(aligned_path, out_path, encoder, options=None, *, dataset="", part=None,
                    extra_attrs=None, **fields):
    """Encode the valid faces of an aligned-face cache into the feature file ``out_path``.

    The part of :func:`extract_features` after alignment, for callers that hold an encoder
    already (the bench, a torchrun rank). ``options``: an :class:`EncodeOptions` (default: one
    of ``fields``: ``regions``, ``batch_size``, ``workers``, ``overwrite``, ``float16``,
    ``progress``, ``on_batch``), plus ``part`` (a slice of the valid faces: a torchrun rank's
    shard) and ``extra_attrs`` (more attributes of a new file); returns an
    :class:`ExtractReport`.
    """
    import json

    opt = options if options is not None else EncodeOptions(**fields)
    regions, overwrite = opt.regions, opt.overwrite
    spec = encoder.spec
    faces = AlignedFaces(aligned_path)
    rows = np.flatnonzero(faces.valid)
    if part is not None:
        rows = rows[part]
    keys = faces.keys[rows]
    prep = {**encoder.preprocessing,  # the mean a weights file brought, not the spec's
            "resize": "bilinear, antialiased", "aligned_settings": faces.settings}
    rep = ExtractReport(Path(out_path), spec.name, encoder.weights_id, spec.dims, len(rows))
    ident = StoreIdentity(keys, spec.name, spec.code_layer, encoder.weights_id, spec.input_size,
                          spec.dims, "float16" if opt.float16 else "float32", faces.fingerprint)
    if not overwrite and is_complete(out_path, regions, ident):
        faces.close()
        rep.computed = {reg: 0 for reg in regions}
        return rep
    with faces, open_store(out_path, ident, overwrite=overwrite,
                           source_changes=faces.rebuilt_because,
                           extra_attrs={"dataset": dataset, "preprocessing": json.dumps(prep),
                                        "family": spec.family, **(extra_attrs or {})}) as store:
        for reg in regions:
            start = store.rows_done(reg)
            store.codes(reg)  # an empty region still gets its dataset
            rep.computed[reg] = len(rows) - start
            t0 = time.perf_counter()
            _encode_region(faces, rows, start, reg, encoder, store, opt)
            rep.seconds += time.perf_counter() - t0
    return rep


def _encode_region(faces, rows, start, region, encoder, store, opt):
    from tqdm import tqdm

    batch_size, workers, on_batch = opt.batch_size, opt.workers, opt.on_batch
    source = FaceSource(faces, FaceInput(region, encoder.input_size, resize_full=False))
    bar = tqdm(total=len(rows), initial=start, desc=f"{encoder.spec.name} {region}", unit="frame",
               disable=not opt.progress or None, dynamic_ncols=True, smoothing=0.1)
    try:  # the next batches are read in a thread while the network runs (``workers`` ahead)
        for a, _, imgs in source.batches(rows[start:], batch_size, threads=min(1, workers),
                                         depth=workers):
            codes = encoder(imgs)
            store.write(region, start + a, codes)
            interrupt.check()  # Ctrl-C: stop here, the rows written are kept (rows_done)
            bar.update(len(codes))
            if on_batch is not None:
                on_batch(region, start + a + len(codes))
    finally:
        bar.close()
