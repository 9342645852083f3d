"""Where the one loop's jobs run: this process, local worker processes, a Dask cluster, torchrun.

:func:`run_units` takes a method (:mod:`classify.learn.method`) and its (fold, unit) jobs and returns
every job's :class:`~classify.learn.loop.UnitResult`, in job order, whatever the kind (per-AU
estimators, LSTMs, fine-tuned CNNs, Method B's stages):

this process
    ``method.workers`` is 1 (or one job): jobs one after another.
local processes
    ``method.workers > 1``: a loky pool; each worker holds its compute threads to
    ``cores // workers`` (:meth:`Method.limited_threads`: BLAS for estimators, torch for
    networks) and gets the method from :meth:`Method.for_pool` (codes memory-mapped, not copied).
a Dask cluster
    ``scheduler`` (``--scheduler tcp://HOST:PORT`` or ``DASK_SCHEDULER_ADDRESS``; ``pip install
    'featbench[dask]'``): the method's large inputs (:meth:`Method.shared`: codes) go to every
    worker once, then one task per job. Units written to the work folder (networks) need it on a
    file system the workers share.
torchrun ranks
    Under ``torchrun --nproc-per-node N`` (``RANK``, ``WORLD_SIZE``): rank r trains jobs r, r+N,
    r+2N...; the results are gathered on rank 0 (a gloo process group: CPU and GPU alike), which
    writes the run; the other ranks get None.

Reproducibility: every unit is seeded by its own settings (seed, fold, AU), never by where it
runs, and units that use a process-global random state (liblinear's coordinate order, torch's
generator) take turns within one worker process (a lock), so a job gives the same model on any
backend. What can differ is floating-point reduction order where the thread count differs (BLAS
and torch split sums across threads): estimators give identical results (liblinear and the LDA's
solvers here are single-threaded or exact), networks agree to float32 rounding (the tests compare
per-AU weights to 1e-4 and the decisions exactly).
"""

import os
import sys
import threading
import time

from featbench.core import interrupt

#: one unit at a time per worker process: liblinear and torch draw from process-global state
_FIT_LOCK = threading.Lock()


def run_units(method, jobs, *, work=None, done=None, progress=True, say=None, scheduler=None):
    """Train every job (:func:`classify.learn.loop.train_unit`) where the settings say (see the
    module docstring); return their results, in job order (None on a torchrun rank but 0).

    ``work``: the folder finished units wait in (networks; None: nothing saved); ``done``: the
    run's folder of an earlier run, whose finished units are reused; ``say(job)`` is called
    before each job trains in this process (a progress line).
    """
    from extract.distributed import torchrun_env

    from classify.scale import scheduler_address

    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    scheduler = scheduler_address(scheduler)
    if scheduler:
        return run_dask(method, jobs, scheduler, work=work, done=done, progress=progress)
    if torchrun_env() is not None:
        return run_ranks(method, jobs, work=work, done=done, progress=progress, say=say)
    return run_local(method, jobs, work=work, done=done, progress=progress, say=say)


def _bar(method, jobs, progress):
    return dict(total=len(jobs), desc=method.kind, unit="unit", file=sys.stderr,
                disable=not progress, leave=False)


def run_local(method, jobs, *, work=None, done=None, progress=True, say=None):
    """In this process, or in ``method.workers`` loky processes."""
    import tempfile

    from tqdm import tqdm

    from classify.learn.loop import train_unit

    workers = max(1, min(int(method.workers), len(jobs)))
    if workers == 1:
        out = []
        # Ctrl-C: at the next unit (the training loop itself stops at the next batch)
        for job in interrupt.between(jobs if say is not None
                                     else tqdm(jobs, **_bar(method, jobs, progress))):
            if say is not None:
                say(job)
            out.append(train_unit(method, job, work=work, done=done, progress=progress))
        return out
    from joblib import Parallel, delayed

    threads = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory(prefix="featbench-pool-") as tmp:
        pooled = method.for_pool(workers, tmp)
        gen = Parallel(n_jobs=workers, backend="loky", return_as="generator")(
            delayed(_in_worker)(pooled, job, work, done, threads) for job in jobs)
        return list(tqdm(interrupt.between(gen), **_bar(method, jobs, progress)))


def _in_worker(method, job, work, done, threads):
    from classify.learn.loop import train_unit

    with method.limited_threads(threads):
        t0, c0 = time.perf_counter(), time.process_time()
        res = train_unit(method, job, work=work, done=done)
    res.fit.update(seconds=round(time.perf_counter() - t0, 2),
                   cpu_seconds=round(time.process_time() - c0, 2))
    return res


# --- Dask ---------------------------------------------------------------------------------------
def _on_dask_worker(method, shared, job, work, done):
    from classify.learn.loop import train_unit

    with _FIT_LOCK:
        method = method.attach(shared) if shared is not None else method
        t0, c0 = time.perf_counter(), time.process_time()
        res = train_unit(method, job, work=work, done=done)
    res.fit.update(seconds=round(time.perf_counter() - t0, 2),
                   cpu_seconds=round(time.process_time() - c0, 2))
    return res


def run_dask(method, jobs, address, *, work=None, done=None, progress=True):
    """On the Dask cluster at ``address``: the method's shared inputs once, a task per job."""
    from featbench.core.errors import UsageError

    from classify.scale import probe_scheduler

    probe_scheduler(address)
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs Dask's distributed scheduler: pip install "
                         "'featbench[dask]'") from None
    from tqdm import tqdm

    try:
        client = Client(address, timeout="20s", set_as_default=False)
    except OSError as exc:
        raise UsageError(f"--scheduler {address}: no Dask scheduler answers there ({exc})") from None
    shared = method.shared()
    light = method.attach(None) if shared is not None else method
    with client:
        data = client.scatter(shared, broadcast=True) if shared is not None else None
        futures = [client.submit(_on_dask_worker, light, data, job, work, done, pure=False)
                   for job in jobs]
        bar = dict(_bar(method, jobs, progress), desc=f"{method.kind} (dask)")
        return [fut.result() for fut in tqdm(futures, **bar)]  # in job order


# --- torchrun -----------------------------------------------------------------------------------
def run_ranks(method, jobs, *, work=None, done=None, progress=True, say=None):
    """This rank's share of the jobs; every result on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    from extract.distributed import join_group, torchrun_env

    rank, world, _, _ = torchrun_env()
    join_group()
    mine = run_local(method, jobs[rank::world], work=work, done=done,
                     progress=progress and rank == 0, say=say if rank == 0 else None)
    if method.resumable:  # networks travel as their tensors (a network class may be local)
        for res in mine:
            if res.net is not None:
                res.net = _State(method.state(res.net))
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    out = [None] * len(jobs)
    for r, part in enumerate(gathered):
        out[r::world] = part
    for job, res in zip(jobs, out):
        if isinstance(res.net, _State):  # the same network, rebuilt here with its tensors
            net, _ = method.build(job, method.unit_data(job))
            res.net = method.load_state(net, res.net.tensors) or net
    return out


class _State:
    """A trained network's tensors on their way from a rank to rank 0."""

    def __init__(self, tensors):
        self.tensors = tensors


def barrier():
    """Wait for every torchrun rank (nothing outside torchrun): what rank 0 wrote is there."""
    from extract.distributed import torchrun_env

    if torchrun_env() is not None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def is_writer():
    """True where a run is written: outside torchrun, and on its rank 0."""
    from extract.distributed import is_main_process

    return is_main_process()
