"""Classification past one machine's memory and cores: a Dask cluster, codes read from HDF5.

Two independent levers of :func:`classify.run.classify_run`:

Dask (``featbench classify --scheduler tcp://HOST:PORT`` or ``DASK_SCHEDULER_ADDRESS``)
    The per-(fold, AU) fits run as tasks of an existing Dask cluster through joblib's Dask
    backend. The codes travel to the workers once (joblib scatters large arguments) or, when
    they are read from HDF5 (below), as the file's path: the workers then need the workspace on
    a shared file system. liblinear draws its coordinate order from one process-global random
    state, so fits in one worker process take turns (a lock): results are identical to the local
    run with the same seed whatever the workers' thread count; give workers ``--nthreads 1`` and
    more processes for throughput.

Bounded memory (``FEATBENCH_MEMORY_GB``, default: half of this machine's RAM)
    - codes larger than the budget are not loaded: each fit gathers its balanced training rows
      from the HDF5 file block by block (:class:`H5Codes`), and test frames are scored block by
      block, so memory follows the training set, not the data set;
    - a training set that still exceeds a worker's share of the budget is fitted out of core:
      ``SGDClassifier(loss="hinge")`` (a linear SVM by stochastic gradient) with ``partial_fit``
      over blocks, the scaler fitted by ``partial_fit`` in a first pass, the regularisation
      chosen on validation like the SVM's C. The run's settings name it (``solver``).

``settings.json`` of every run records ``peak_rss_mb`` (this process and the largest worker).
"""

import os
import re
import threading

import numpy as np

from featbench.core.errors import StoreError, UsageError, describe_os_error
from featbench.core.frames import KEY_DTYPE

from classify.estimators import AUFit, settle_threshold, _val_f1
from extract.download import connect_timeout
from extract.store import read_codes

#: rows are read from HDF5 in contiguous blocks of about this many bytes
BLOCK_BYTES = 64 << 20
#: SGD's regularisation grid (alpha = 1 / (C n)): chosen on validation F1
SGD_ALPHAS = (1e-5, 1e-4, 1e-3)
SGD_EPOCHS = 5

_FIT_LOCK = threading.Lock()


# --- memory ------------------------------------------------------------------------------------
def memory_budget_bytes():
    """``FEATBENCH_MEMORY_GB`` in bytes (default: half of the physical memory)."""
    text = os.environ.get("FEATBENCH_MEMORY_GB", "").strip()
    if text:
        try:
            gb = float(text)
        except ValueError:
            raise UsageError(f"FEATBENCH_MEMORY_GB={text!r}: give a number of GB (8, 0.5)") from None
        if gb <= 0:
            raise UsageError(f"FEATBENCH_MEMORY_GB={text!r}: must be positive")
        return int(gb * (1 << 30))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def peak_rss_mb():
    """This process's peak resident set size, in MB."""
    import resource
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


# --- codes read from HDF5 ----------------------------------------------------------------------
class H5Codes:
    """The ``/<region>/codes`` of a feature file, read by rows on demand (picklable, by path).

    ``codes[rows]`` returns the float32 rows in the order asked, reading the file in
    contiguous blocks of :data:`BLOCK_BYTES` that hold any of them (contiguous reads are what
    HDF5 is fast at; per-row point selections are not).
    """

    def __init__(self, path, region):
        import h5py

        self.path, self.region = str(path), region
        with h5py.File(self.path, "r") as f:
            ds = f[region]["codes"]
            self.shape = tuple(ds.shape)
            self.itemsize = ds.dtype.itemsize
        self._f = None

    def __getstate__(self):
        return {"path": self.path, "region": self.region, "shape": self.shape,
                "itemsize": self.itemsize, "_f": None}

    def __len__(self):
        return self.shape[0]

    @property
    def block_rows(self):
        return max(1, BLOCK_BYTES // max(1, self.shape[1] * self.itemsize))

    def _ds(self):
        if self._f is None:
            import h5py

            self._f = h5py.File(self.path, "r")
        return self._f[self.region]["codes"]

    def blocks(self, rows, rng=None):
        """Yield ``(positions, codes)``: for each file block, which of ``rows`` it holds.

        With ``rng``, the blocks come in a random order (SGD epochs); one block is in memory
        at a time.
        """
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        step = self.block_rows
        bounds, i = [], 0
        while i < srt.size:
            j = int(np.searchsorted(srt, int(srt[i]) + step, side="left"))
            bounds.append((i, j))
            i = j
        ds = self._ds() if bounds else None
        for k in (rng.permutation(len(bounds)) if rng is not None else range(len(bounds))):
            i, j = bounds[k]
            a = int(srt[i])
            block = ds[a:int(srt[j - 1]) + 1]
            yield order[i:j], block[srt[i:j] - a].astype(np.float32, copy=False)

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.shape[1]), np.float32)
        for where, codes in self.blocks(rows):
            out[where] = codes
        return out

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


def codes_bytes(path, regions):
    """Bytes the ``regions``' codes of a feature file take in memory as float32."""
    import h5py

    with h5py.File(path, "r") as f:
        return sum(int(np.prod(f[r]["codes"].shape)) * 4 for r in regions if r in f)


def lazy_codes(path, regions):
    """Return ``{region: H5Codes}`` after the checks :func:`extract.store.read_codes` makes."""
    import h5py

    out = {}
    for r in regions:
        with h5py.File(path, "r") as f:
            small = r in f and f[r]["codes"].shape[0] == 0
        if small:
            read_codes(path, r)  # the same errors, at no cost
        else:
            _check_complete(path, r)
        out[r] = H5Codes(path, r)
    return out


def keys_and_attrs(path):
    """``/frames`` (as KEY_DTYPE) and the attributes of a feature file, without its codes."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        return np.asarray(f["frames"][:]).astype(KEY_DTYPE), attrs


def _check_complete(path, region):
    import h5py

    with h5py.File(path, "r") as f:
        n = int(f["frames"].shape[0])
        done = int(f[region].attrs.get("rows_done", 0)) if region in f else 0
    if done < n:
        read_codes(path, region)  # raises the store's own message (missing / incomplete)
        raise StoreError(f"{path}: {region} codes incomplete ({done} of {n} rows)")


def score(model, X, rows):
    """``model.decision_function`` of codes ``X[rows]``, block by block when ``X`` is on disk."""
    rows = np.asarray(rows, dtype=np.int64)
    if not isinstance(X, H5Codes):
        return model.decision_function(X[rows]).astype(np.float32)
    out = np.empty(rows.size, np.float32)
    for where, codes in X.blocks(rows):
        out[where] = model.decision_function(codes)
    return out


# --- out-of-core linear SVM --------------------------------------------------------------------
def liblinear_bytes(n_train, dims, n_thr=0):
    """Memory an in-memory SVM fit of ``n_train`` rows takes: the gathered float32 rows, their
    scaled float64 copy and liblinear's own copy (16-byte index/value nodes), plus the float32
    rows its threshold is tuned on."""
    return n_train * dims * (4 + 8 + 16) + n_thr * dims * 4


def fit_streamed(X, train_rows, y_train, val_rows, y_val, *, thr_rows=None, y_thr=None,
                 tune_threshold=False, class_weight=None, seed=0, budget=None):
    """Fit a hinge-loss ``SGDClassifier`` over ``X[train_rows]`` streamed in blocks.

    Returns an :class:`classify.estimators.AUFit` (``C`` = 1 / (alpha n_train) of the alpha
    chosen on validation F1), its notes naming the solver.
    """
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train, dtype=np.int8)
    rng = np.random.default_rng(seed)
    scaler = StandardScaler()
    for where, codes in X.blocks(train_rows):
        scaler.partial_fit(codes)
    cw = None
    if class_weight == "balanced":
        pos = max(1, int((y_train == 1).sum()))
        neg = max(1, int((y_train == 0).sum()))
        cw = {1: y_train.size / (2 * pos), 0: y_train.size / (2 * neg)}
    sgds = {a: SGDClassifier(loss="hinge", alpha=a, random_state=seed, class_weight=cw,
                             learning_rate="optimal", average=True) for a in SGD_ALPHAS}
    train_rows = np.asarray(train_rows, dtype=np.int64)
    for _ in range(SGD_EPOCHS):
        for where, codes in X.blocks(train_rows, rng):
            z = scaler.transform(codes)
            perm = rng.permutation(len(where))
            for sgd in sgds.values():
                sgd.partial_fit(z[perm], y_train[where][perm], classes=np.array([0, 1]))
    out = AUFit(model=None)
    y_val = np.asarray(y_val, dtype=np.int8)
    for a, sgd in sgds.items():
        model = Pipeline([("scale", scaler), ("clf", sgd)])
        out.grid[1.0 / (a * max(1, y_train.size))] = (
            _val_f1(y_val, score(model, X, val_rows)) if y_val.size else float("nan"))
    scored = {c: f for c, f in out.grid.items() if not np.isnan(f)}
    C = max(scored, key=lambda c: (scored[c], -c)) if scored else 1.0 / (1e-4 * max(1, y_train.size))
    alpha = {1.0 / (a * max(1, y_train.size)): a for a in SGD_ALPHAS}.get(C, 1e-4)
    out.C = float(C)
    out.model = Pipeline([("scale", scaler), ("clf", sgds[alpha])])
    gb = train_rows.size * X.shape[1] * 8 / (1 << 30)
    out.notes.append(f"out-of-core: SGD linear SVM (hinge, alpha={alpha:g}) over "
                     f"{train_rows.size} training rows streamed from HDF5 ({gb:.1f} GB as float64 "
                     f"> the memory budget{'' if budget is None else f' {budget / (1 << 30):.1f} GB'})")
    if thr_rows is None:
        thr_rows, y_thr = val_rows, y_val
    settle_threshold(out, y_thr, lambda: score(out.model, X, thr_rows), tune_threshold)
    return out


# --- Dask --------------------------------------------------------------------------------------
def scheduler_address(scheduler=None):
    """``--scheduler`` or ``DASK_SCHEDULER_ADDRESS`` (None: run locally)."""
    return scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


#: ``--scheduler`` forms the probe checks (others, ucx:// or inproc://, go to Dask as given)
_ADDRESS_RE = re.compile(r"^(?:(?P<scheme>tcp|tls)://)?(?P<host>\[[^\]]+\]|[^:/\s\[\]]+):"
                         r"(?P<port>\d{1,5})/?$")


def probe_scheduler(address, timeout=None):
    """Check in seconds that a Dask scheduler answers at ``address``, before any work goes there.

    Dask's own client waits (and retries) for as long as its timeout on a host that is not a
    Dask scheduler: an HTTP server or a silent listener held ``classify`` for minutes. Here a
    scheduler's handshake (which it sends first, on connection: msgpack naming its
    ``compression``, ``python`` and ``pickle-protocol``) must arrive within ``timeout``
    seconds (default ``FEATBENCH_CONNECT_TIMEOUT``, 10). A ``tls://`` address is only
    connected to (its handshake is encrypted).

    Raises
    ------
    UsageError
        Not an address, nothing listening, or something else than a Dask scheduler: one line.
    """
    import socket

    if address is None or "://" in address and not address.startswith(("tcp://", "tls://")):
        return
    m = _ADDRESS_RE.match(address.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise UsageError(f"--scheduler {address}: not a Dask scheduler address (give "
                         "tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786)")
    timeout = connect_timeout() if timeout is None else timeout
    host = m["host"].strip("[]")
    try:
        with socket.create_connection((host, int(m["port"])), timeout=timeout) as sock:
            if m["scheme"] == "tls":
                return
            greeting = _read_greeting(sock, timeout)
    except OSError as exc:
        raise UsageError(f"--scheduler {address}: no Dask scheduler answers there "
                         f"({describe_os_error(exc) if exc.errno else exc or 'timed out'})") from None
    if b"pickle-protocol" not in greeting:
        said = "nothing" if not greeting else f"{len(greeting)} bytes that are not Dask's"
        raise UsageError(f"--scheduler {address}: something listens there but it is not a Dask "
                         f"scheduler (it said {said} within {timeout:g} s; a Dask scheduler "
                         "greets at once)")


def _read_greeting(sock, timeout):
    """Return the first bytes a server sends within ``timeout`` s (at most one Dask frame)."""
    import socket
    import struct
    import time

    deadline, data = time.monotonic() + timeout, b""
    while len(data) < 8 + (struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0) \
            and len(data) < 4096:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            block = sock.recv(4096)
        except socket.timeout:
            break
        if not block:
            break
        data += block
    return data


def _locked(task, job, kw):
    with _FIT_LOCK:
        return task(job, **kw)


def run_on_dask(task, jobs, address, progress, **kw):
    """Run ``task(job, **kw)`` for every job on the Dask cluster at ``address``, in job order."""
    probe_scheduler(address)
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed (pip install distributed)") from None
    from joblib import Parallel, delayed, parallel_config
    from tqdm import tqdm

    try:
        client = Client(address, timeout="20s", set_as_default=False)
    except OSError as exc:
        raise UsageError(f"--scheduler {address}: no Dask scheduler answers there ({exc})") from None
    with client, parallel_config(backend="dask", client=client):
        gen = Parallel(return_as="generator")(delayed(_locked)(task, j, kw) for j in jobs)
        return list(tqdm(gen, total=len(jobs), desc="classify (dask)", unit="AU",
                         disable=not progress, leave=False))


__all__ = ["H5Codes", "memory_budget_bytes", "peak_rss_mb", "codes_bytes", "lazy_codes",
           "keys_and_attrs", "score", "liblinear_bytes",
           "fit_streamed", "scheduler_address", "probe_scheduler", "run_on_dask"]
