"""How many threads featbench's torch work runs on: chosen by the tool, not by the user.

torch's default is one intra-op (OpenMP) thread per core. That is right on a quiet machine and
wrong on a shared one: OpenMP threads wait for each other at every parallel region, so when
another process holds a core, the thread that lost it stalls the others (measured on this
project's 2-core machine beside a busy process: a ResNet-18 training step at 64 px took 1.53 s
with 2 threads and 1.11 s with 1; two threads beside other work were up to 20 times slower).

:func:`choose_threads` counts the cores this process may run on (its affinity), subtracts what
other processes use right now (sampled from ``/proc/stat`` over a tenth of a second, this
process's own use taken out; the 1-minute load average where there is no ``/proc``) and what
featbench's own reader threads need (:func:`reader_threads`, each counted as a quarter of a core:
they decode and augment faces between waits), and rounds: a core is used when at least half of
it is free, and never fewer than one. :func:`use_torch_threads` applies the choice to torch;
the training loop calls it at each epoch (the machine changes while a run trains),
extraction before each feature file, and predict once its face-detection threads run (their
cores are reserved: beside two busy detection threads on 2 cores torch's default of two
threads made predict 1.2x slower than one).

The user keeps the last word without having to know any of this: ``FEATBENCH_THREADS=N`` (or
``OMP_NUM_THREADS``, which torch reads at start-up) fixes the number, and a worker that was
given its share of the cores (:func:`set_torch_threads`: the LSTM's and the classifiers' worker
processes) keeps it.
"""

import os
import time

#: seconds over which /proc/stat is sampled
SAMPLE_S = 0.1
#: a choice is reused for this long before the machine is sampled again
REUSE_S = 30.0
#: the share of a core one reader / prefetch thread is counted as
READER_LOAD = 0.25

_pinned = None
_last = {}  # (helpers, cores) -> (time, choice)


def cpu_cores():
    """The cores this process may run on (its affinity mask; else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def reader_threads():
    """The background reader threads featbench starts beside a network: a quarter of the
    cores, 1 to 4 (one on a 2-core machine, which leaves the cores to the network)."""
    return max(1, min(4, cpu_cores() // 4))


def _cpu_ticks():
    """(busy, total) jiffies of every CPU from ``/proc/stat``, or None without it."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def busy_elsewhere(interval=SAMPLE_S):
    """Cores in use by other processes right now, as a float (0.0 = the machine is ours).

    Sampled from ``/proc/stat`` over ``interval`` seconds, this process's own CPU time in that
    interval taken out; without ``/proc``, the 1-minute load average (which counts this
    process too, so it errs towards fewer threads).
    """
    n_all = max(1, os.cpu_count() or 1)
    first, own0 = _cpu_ticks(), time.process_time()
    if first is None:
        try:
            return float(min(os.getloadavg()[0], n_all))
        except (AttributeError, OSError):
            return 0.0
    t0 = time.perf_counter()
    time.sleep(interval)
    second, own1 = _cpu_ticks(), time.process_time()
    wall = time.perf_counter() - t0
    busy, total = second[0] - first[0], second[1] - first[1]
    if total <= 0 or wall <= 0:
        return 0.0
    cores_busy = busy / total * n_all  # /proc/stat sums every CPU of the machine
    return max(0.0, min(float(n_all), cores_busy - (own1 - own0) / wall))


def choose_threads(*, helpers=0, cores=None, others=None):
    """Return torch's intra-op thread count for this moment (see the module docstring).

    Parameters
    ----------
    helpers : int
        Reader / prefetch threads featbench runs beside the network.
    cores : int, optional
        Cores this process may use (default :func:`cpu_cores`).
    others : float, optional
        Cores other processes use (default: sampled, :func:`busy_elsewhere`).
    """
    cores = cpu_cores() if cores is None else max(1, int(cores))
    others = busy_elsewhere() if others is None else max(0.0, float(others))
    free = cores - others - READER_LOAD * max(0, int(helpers))
    return int(max(1, min(cores, int(free + 0.5))))


def _user_threads():
    """The thread count the user fixed (``FEATBENCH_THREADS``, ``OMP_NUM_THREADS``), or None."""
    for var in ("FEATBENCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def set_torch_threads(n):
    """Give torch ``n`` intra-op threads for good in this process (a worker's share of the
    cores): :func:`use_torch_threads` leaves it alone from then on."""
    import torch

    global _pinned
    _pinned = max(1, int(n))
    torch.set_num_threads(_pinned)
    return _pinned


def use_torch_threads(*, helpers=0, reserved=0):
    """Set torch's intra-op threads to the tool's choice (or the user's / a worker's); return it.

    ``reserved``: cores featbench's own CPU-bound threads hold beside the network (predict's
    face-detection threads), taken out of the cores before choosing. The machine is sampled at
    most every :data:`REUSE_S` seconds; in between the last choice is reused, so calling this
    once per epoch or per file costs nothing.
    """
    import torch

    fixed = _pinned or _user_threads()
    if fixed:
        if torch.get_num_threads() != fixed:
            torch.set_num_threads(fixed)
        return fixed
    cores = max(1, cpu_cores() - max(0, int(reserved)))
    key = (int(helpers), cores)
    when, n = _last.get(key, (None, None))
    if when is None or time.monotonic() - when > REUSE_S:
        n = choose_threads(helpers=helpers, cores=cores)
        _last[key] = (time.monotonic(), n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
