"""Extraction over several processes (and machines) with ``torchrun``.

``torchrun --nproc-per-node N -m featbench extract --model M ...`` starts N copies of
``featbench extract``; torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) tells each which part is its own. Multi-node runs use torchrun's
usual rendezvous flags (``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint HOST:PORT``) over a
workspace on a shared file system.

How the work is split and joined:

- the frames with a face (the rows of the feature file) are cut into ``WORLD_SIZE`` contiguous
  parts; rank r encodes part r into its own shard file
  ``data/features/<ds>/<model>.shards/rank<r>-of-<N>.h5``, a normal feature file (same
  attributes, its own rows only), so a rank that stopped resumes its shard on its own and a
  rerun leaves complete shards untouched;
- a shard from a different run (other weights, other frame list, other world size: its rows
  differ) is refused by the store's identity check, never mixed;
- once every rank is done (a barrier over a gloo process group: CPU and GPU alike, no
  collective touches the codes), rank 0 writes ``<model>.h5`` with ``/frames`` and, per region,
  ``/<region>/codes`` as an HDF5 virtual dataset over the shards (no copy; the shard paths are
  stored relative to the file, so the features folder can be moved as a whole).

One GPU per rank (``cuda:LOCAL_RANK``) when CUDA is present; on CPUs each rank takes
``cpu_count / LOCAL_WORLD_SIZE`` torch threads. Rank 0 aligns the faces (cached) before the
others read them.
"""

import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
from featbench.core.align import AlignedFaces, ensure_aligned
from extract.encoders import create_encoder
from extract.loop import extract_aligned, ExtractReport
from extract.store import StoreIdentity, is_complete, open_store
from featbench.core.errors import StoreError

#: how long a rank waits for the others at the join (extraction of a large set takes hours)
JOIN_TIMEOUT = timedelta(hours=48)


def join_group():
    """Join torchrun's gloo process group (once per process), and leave it at exit.

    Left to the interpreter's teardown, gloo's worker threads can still hold work when the
    process exits, and the process then aborts ("terminate called without an active
    exception", SIGABRT): about one run in four of the two-rank tests here (pytorch/pytorch#190489).
    ``destroy_process_group`` at exit, while the interpreter is whole, ends them in order.
    """
    import atexit

    import torch.distributed as dist

    if dist.is_initialized():
        return
    dist.init_process_group("gloo", timeout=JOIN_TIMEOUT)
    atexit.register(_leave_group)


def _leave_group():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_env():
    """Return ``(rank, world_size, local_rank, local_world_size)`` under torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return (int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0") or 0),
            local_world)


def is_main_process():
    """True outside torchrun and on its rank 0 (the process that prints summaries)."""
    env = torchrun_env()
    return env is None or env[0] == 0


def shard_path(out, rank, world):
    """The shard file of ``rank`` of ``world`` beside the feature file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shards") / f"rank{rank:03d}-of-{world:03d}.h5"


def shard_slice(n, rank, world):
    """Rows ``[lo, hi)`` of ``n`` that ``rank`` of ``world`` encodes (contiguous, sizes +-1)."""
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def _device_for(device, local_rank):
    import torch

    if device in (None, "auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu" if device in (None, "auto") else device


def extract_distributed(table, workspace, model, options, *, weights=None, device="auto"):
    """This rank's part of a torchrun extraction, then (rank 0) the join; see the module doc.

    ``options``: how the codes are written (:class:`~extract.loop.EncodeOptions`; its progress
    bar on rank 0 only).

    Returns
    -------
    ExtractReport
        On rank 0: the whole file, rows computed by all ranks; elsewhere: this rank's shard.
    """
    import torch
    import torch.distributed as dist


    rank, world, local_rank, local_world = torchrun_env()
    join_group()
    dev = _device_for(device, local_rank)
    if dev == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    encoder = create_encoder(model, weights=weights, device=dev)
    spec = encoder.spec
    regions, overwrite = options.regions, options.overwrite
    dtype = "float16" if options.float16 else "float32"
    if rank == 0:
        aligned = ensure_aligned(table, workspace, progress=options.progress)
    dist.barrier()
    if rank != 0:
        aligned = ensure_aligned(table, workspace, progress=False)
    with AlignedFaces(aligned) as faces:
        keys = faces.keys[np.flatnonzero(faces.valid)]
        source = faces.fingerprint  # what the codes are made from (stale codes are refused)
    out = Path(workspace.features_path(table.dataset, model))
    ident = StoreIdentity(keys=keys, model=spec.name, layer=spec.code_layer,
                          weights=encoder.weights_id, input_size=spec.input_size, dims=spec.dims,
                          dtype=dtype, source=source)
    if not overwrite and is_complete(out, regions, ident):
        dist.barrier()
        return ExtractReport(out, spec.name, encoder.weights_id, spec.dims, len(keys),
                             {reg: 0 for reg in regions})
    part = shard_slice(len(keys), rank, world)
    shard = shard_path(out, rank, world)
    rep = extract_aligned(aligned, shard, encoder,
                          replace(options, progress=options.progress and rank == 0),
                          dataset=table.dataset, part=part,
                          extra_attrs={"shard_rank": rank, "shard_world_size": world,
                                       "shard_rows": f"{part.start}:{part.stop}"})
    reports = [None] * world
    dist.all_gather_object(reports, (rep.computed, rep.seconds))
    if rank != 0:
        dist.barrier()
        return rep
    try:
        join_shards(out, [shard_path(out, r, world) for r in range(world)], regions, ident,
                    overwrite=overwrite)
    finally:
        dist.barrier()
    total = ExtractReport(out, spec.name, encoder.weights_id, spec.dims, len(keys))
    total.computed = {reg: sum(c.get(reg, 0) for c, _ in reports) for reg in regions}
    # the ranks ran side by side: the wall time is the slowest rank's
    total.seconds = max(s for _, s in reports)
    return total


def join_shards(out, shards, regions, identity, *, overwrite=False):
    """Write the feature file ``out`` whose region codes are virtual datasets over ``shards``.

    Each shard must be a complete feature file of ``identity`` (a
    :class:`~extract.store.StoreIdentity`) whose frames, in shard order, are its ``keys``.
    Regions already complete in ``out`` are kept.

    Raises
    ------
    StoreError
        A shard is missing, incomplete, or of another run.
    """
    import h5py


    out = Path(out)
    keys, dims, dtype = identity.keys, identity.dims, identity.dtype
    parts, at = [], 0
    for path in shards:
        if not path.is_file():
            raise StoreError(f"{path}: shard missing (rerun the same torchrun command)")
        with h5py.File(path, "r") as s:
            m = int(s["frames"].shape[0])
            if not np.array_equal(s["frames"][:], keys[at:at + m]):
                raise StoreError(f"{path}: shard of another frame list or world size; "
                                 "pass --overwrite to replace it")
            for reg in regions:
                if reg not in s or int(s[reg].attrs.get("rows_done", 0)) != m:
                    raise StoreError(f"{path}: {reg} shard incomplete (rerun the same "
                                     "torchrun command to finish it)")
        parts.append((path, at, m))
        at += m
    if at != len(keys):
        raise StoreError(f"{out}: the shards hold {at} rows, the frame list {len(keys)}")
    n = len(keys)
    shards_attr = ",".join(os.path.relpath(p, out.parent) for p, _, _ in parts)
    with open_store(out, identity, overwrite=overwrite, extra_attrs={"shards": shards_attr}) as store:
        f = store.f
        for reg in regions:
            if store.rows_done(reg) == n:
                continue
            if reg in f:
                del f[reg]
            layout = h5py.VirtualLayout(shape=(n, dims), dtype=np.dtype(dtype))
            for path, lo, m in parts:
                if m:
                    layout[lo:lo + m] = h5py.VirtualSource(
                        os.path.relpath(path, out.parent), f"{reg}/codes", shape=(m, dims),
                        dtype=np.dtype(dtype))
            g = f.create_group(reg)
            g.create_virtual_dataset("codes", layout, fillvalue=np.nan)
            g.attrs["rows_done"] = n
        f.flush()
    return out


__all__ = ["torchrun_env", "is_main_process", "shard_path", "shard_slice", "extract_distributed",
           "join_shards"]
