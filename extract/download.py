"""Getting a published weights file into the cache: on first use, verified, never half-written.

The cache is torchvision's (``$TORCH_HOME/hub/checkpoints``, :func:`checkpoints_dir`),
so files featbench fetches are the files torchvision would use and vice versa.

Environment
-----------
``FEATBENCH_OFFLINE=1`` (or ``--offline``, or ``HF_HUB_OFFLINE=1``)
    Never open a connection: a missing file is one error line naming the file, the cache folder
    and the URL to fetch it from on a connected machine.
``FEATBENCH_WEIGHTS_MIRROR=http://host[:port][/prefix]``
    Replaces the scheme and host of every published URL, keeping its path (as ``HF_ENDPOINT``
    redirects the Hugging Face hub): ``https://download.pytorch.org/models/x-1234abcd.pth`` is
    read from ``http://host/prefix/models/x-1234abcd.pth``. Same hash checks.
``FEATBENCH_CONNECT_TIMEOUT=SECONDS``
    Socket timeout for connecting and for each read (default 10): an unreachable host fails in
    seconds, never hangs. A transfer slower than 1 KB/s over such a window is given up too.
``FEATBENCH_DOWNLOAD_TIMEOUT=SECONDS``
    The most a whole download may take, headers included (default 1800).

A download streams into a part file beside the target (``atomic_path``), hashing as it goes; the
part file is renamed onto the target only when all the announced bytes arrived and the hash
matches, and is deleted on any failure (a truncated response, a wrong hash, a refused
connection, an HTTP error, Ctrl-C), so a file in the cache is always a complete, verified one.
"""

import hashlib
import http.client
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from featbench import __version__
from featbench.core.errors import WeightsError
from featbench.core.workspace import atomic_path

from extract.pins import incomplete, pin, pinned, replaced

_TRUE = ("1", "true", "yes", "on")
_BLOCK = 1 << 20


def is_offline():
    """Whether the network must not be touched (FEATBENCH_OFFLINE, HF_HUB_OFFLINE)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE
               for var in ("FEATBENCH_OFFLINE", "HF_HUB_OFFLINE"))


def set_offline():
    """Make this process (and its children) offline, as ``--offline`` does."""
    os.environ["FEATBENCH_OFFLINE"] = "1"


def mirror_base():
    """The ``FEATBENCH_WEIGHTS_MIRROR`` base URL without a trailing slash, or ``""``."""
    return os.environ.get("FEATBENCH_WEIGHTS_MIRROR", "").strip().rstrip("/")


def mirrored(url):
    """Return ``url`` with its scheme and host replaced by the mirror's (unchanged without one)."""
    base = mirror_base()
    if not base:
        return url
    parts = urllib.parse.urlsplit(url)
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def connect_timeout():
    """Seconds to wait for a connection or a read (FEATBENCH_CONNECT_TIMEOUT, default 10)."""
    try:
        return max(0.1, float(os.environ.get("FEATBENCH_CONNECT_TIMEOUT", "10")))
    except ValueError:
        return 10.0


_DIGESTS = {}


def file_sha256(path):
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoints_dir():
    """``<torch hub dir>/checkpoints`` ($TORCH_HOME/hub/checkpoints): torchvision's weight cache."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def file_digest(path):
    """Return the hex sha256 of ``path``, remembered per (path, size, mtime) in this process."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def where(entry, folder=None):
    """Return the cache path of ``entry`` (a :class:`extract.catalog.WeightsFile`)."""
    return Path(folder or checkpoints_dir()) / entry.filename


def missing_message(entry, path, why):
    """The one line for a file that is not in the cache and could not be fetched."""
    url = mirrored(entry.urls[0]) if entry.urls else ""
    fetch = f" from {url}" if url else ""
    bring = ("copy that Hugging Face cache folder here" if entry.source == "timm"
             else "bring it in with 'featbench weights import FILE'")
    return (f"{entry.filename} is not in {path.parent} and {why}: fetch it{fetch} on a connected "
            f"machine and {bring}, or use --weights random:0")


def fetch(entry, folder=None, *, progress=True):
    """Return ``(path, sha256, downloaded)`` of ``entry``'s file, downloading it when missing.

    A file already in the cache is used when it is the published file: its digest (computed
    once per process) must match the registry's hash, or, for a file without a published hash,
    the sha256 pinned here on its first use (:mod:`extract.pins`); a first use also checks the
    file is complete. Anything else is refused: a file that is not what it claims is never
    labelled with the published weights' name.

    Raises
    ------
    WeightsError
        A cached file that is not the published (or pinned) one, or cut short; offline and
        missing; or every URL failed (refused, timed out, HTTP error, truncated, wrong hash).
        One line naming file, folder and URL.
    """
    path = where(entry, folder)
    if path.is_file():
        digest = file_digest(path)
        bad = entry.check(digest) or (None if entry.pinned else _unpinned_problem(path, entry,
                                                                                 digest))
        if bad:
            raise WeightsError(f"{path}: not {entry.label}'s published file ({bad}); featbench "
                               f"will not label it {entry.identity_name!r}. Delete it to download "
                               "the published one (featbench weights fetch), or pass it as "
                               "--weights PATH: then it is named by its own sha256")
        return path, digest, False
    if is_offline():
        raise WeightsError(missing_message(entry, path, "featbench is offline (--offline, "
                                           "FEATBENCH_OFFLINE or HF_HUB_OFFLINE)"))
    if not entry.urls:
        raise WeightsError(missing_message(entry, path, "it has no download URL"))
    errors = []
    for url in entry.urls:
        url = mirrored(url)
        try:
            digest = download(url, path, check=entry.check, progress=progress,
                              validate=None if entry.pinned else incomplete)
        except FetchFailed as exc:
            errors.append(f"{url}: {exc}")
            continue
        if not entry.pinned:
            pin(path.parent, entry.filename, digest, f"downloaded from {url}")
            print(f"featbench: note: {entry.filename} has no published sha256; pinned on first "
                  f"use with sha256 {digest}", file=sys.stderr)
        return path, digest, True
    raise WeightsError(f"{entry.filename}: download failed ({'; '.join(errors)}); nothing was "
                       f"written to {path.parent}. Fetch it on a connected machine and bring it "
                       "in with 'featbench weights import FILE', or use --weights random:0")


def _unpinned_problem(path, entry, digest):
    """Why a cached file without a published hash cannot be used, or None (then it is pinned
    here if it was not yet: trust on first use, said once)."""
    why = replaced(path.parent, entry.filename, digest)
    if why or pinned(path.parent, entry.filename):
        return why
    why = incomplete(path)
    if why:
        return why
    pin(path.parent, entry.filename, digest, "found in the cache")
    print(f"featbench: note: {entry.filename} has no published sha256; pinned on first use with "
          f"sha256 {digest}", file=sys.stderr)
    return None


class FetchFailed(Exception):
    """One URL did not deliver the file (the reason is the message)."""


def download(url, path, *, check=None, progress=True, validate=None):
    """Download ``url`` to ``path`` through a part file; return the file's sha256.

    ``check(digest)`` returns a reason when the bytes are not the expected file, ``validate(part
    file)`` when they are not a complete file. Raises :class:`FetchFailed` (connection, HTTP
    status, truncation, hash, too slow) with the part file removed.

    Bounded in total time, not only per read: a watchdog shuts the connection's sockets when
    :func:`download_timeout` seconds have passed (headers included), and a transfer slower than
    :data:`MIN_RATE` bytes/s over a :func:`connect_timeout` window is given up (a server that
    trickles a byte a second never times out a read).
    """
    request = urllib.request.Request(url, headers={"User-Agent": f"featbench/{__version__}"})
    sockets, expired = [], threading.Event()
    limit = download_timeout()
    watchdog = threading.Timer(limit, _expire, (sockets, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        with _opener(sockets).open(request, timeout=connect_timeout()) as resp:
            length = resp.headers.get("Content-Length")
            return store_verified(resp, path, check=check, progress=progress, validate=validate,
                                  total=int(length) if length and length.isdigit() else None,
                                  stop=expired)
    except FetchFailed:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchFailed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise FetchFailed(_too_long(limit)) from None
        if isinstance(exc, urllib.error.URLError):
            raise FetchFailed(f"cannot connect ({exc.reason})") from None
        raise FetchFailed(f"connection broken ({type(exc).__name__}: {exc})") from None
    finally:
        watchdog.cancel()


#: a transfer slower than this (bytes per second, over a connect-timeout window) is given up
MIN_RATE = 1024


def download_timeout():
    """Seconds a whole download may take (``FEATBENCH_DOWNLOAD_TIMEOUT``, default 1800)."""
    try:
        return max(0.1, float(os.environ.get("FEATBENCH_DOWNLOAD_TIMEOUT", "1800")))
    except ValueError:
        return 1800.0


def _too_long(limit):
    return (f"not finished within {limit:g} s (FEATBENCH_DOWNLOAD_TIMEOUT): a server too slow "
            "or stuck")


def _expire(sockets, expired):
    """The watchdog: mark the download expired and shut its sockets (a blocked read returns)."""
    expired.set()
    for sock in list(sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _opener(sockets):
    """A urllib opener whose HTTP(S) connections append their sockets to ``sockets``."""
    def watched(base):
        def connection(host, **kw):
            conn = base(host, **kw)
            create = conn._create_connection

            def create_watched(*a, **k):
                sock = create(*a, **k)
                sockets.append(sock)
                return sock

            conn._create_connection = create_watched
            return conn
        return connection

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(Http(), Https())


def _blocks(stream, window=None):
    """Yield the blocks of a binary ``stream`` as they arrive (``read1``: whatever one read
    gives), failing a network stream that delivers less than :data:`MIN_RATE` bytes/s over a
    ``window`` (default :func:`connect_timeout`) seconds."""
    read = getattr(stream, "read1", None) or stream.read
    window = window or connect_timeout()
    start, got = time.monotonic(), 0
    while True:
        block = read(_BLOCK)
        if not block:
            return
        yield block
        got += len(block)
        now = time.monotonic()
        if now - start >= window:
            if got < MIN_RATE * (now - start):
                raise FetchFailed(f"stalled: {got} bytes in {now - start:.0f} s (less than "
                                  f"{MIN_RATE} bytes/s)")
            start, got = now, 0


def store_verified(stream, path, *, check=None, progress=True, total=None, validate=None,
                   stop=None):
    """Copy the binary ``stream`` to ``path`` through a part file, hashing; return the sha256.

    The part file becomes ``path`` only when ``total`` bytes (when given) arrived,
    ``check(digest)`` and ``validate(part file)`` find nothing wrong and the ``stop`` event
    (the download's watchdog) is not set; otherwise it is removed and :class:`FetchFailed`
    says why.
    """
    from tqdm import tqdm

    h, got = hashlib.sha256(), 0
    with atomic_path(path) as part:
        with open(part, "wb") as out, tqdm(total=total, desc=Path(path).name, unit="B",
                                           unit_scale=True, unit_divisor=1024, leave=False,
                                           disable=not progress, file=sys.stderr) as bar:
            for block in _blocks(stream):
                out.write(block)
                h.update(block)
                got += len(block)
                bar.update(len(block))
        if stop is not None and stop.is_set():
            raise FetchFailed(_too_long(download_timeout()))
        if total is not None and got != total:
            raise FetchFailed(f"truncated: {got} of {total} bytes arrived")
        if got == 0:
            raise FetchFailed("empty file")
        bad = (check(h.hexdigest()) if check else None) or (validate(part) if validate else None)
        if bad:
            raise FetchFailed(f"wrong file: {bad}")
    return h.hexdigest()
