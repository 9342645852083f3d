"""A user's own footage: videos, images, folders of images and globs, read as one frame stream.

``featbench predict`` takes any mix of

- a video OpenCV decodes (mp4, avi, mov, mkv, webm...): its rotation metadata is applied (a
  phone's portrait video comes out upright), timestamps come from its frame rate;
- an image (png, jpg, bmp, tiff, webp...): EXIF orientation is applied; RGBA is composited onto
  white, grayscale and 16-bit images become 8-bit RGB; any size;
- a folder: its images, in name order, as one sequence (frame numbers run through the folder,
  as OpenFace's ``-fdir``), and each video in it;
- a glob (``'shots/*.jpg'``), expanded in name order.

Frames are yielded one at a time (a long video streams in constant memory). A file that cannot
be read ends the command with one :class:`~featbench.core.errors.DataError` line naming it; a video
frame that cannot be decoded in the middle of a readable video is yielded with ``image=None``
and becomes a row with ``success = 0``.
"""

import glob
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featbench.core.errors import DataError, UsageError
from featbench.core.faces import open_video

IMAGE_EXTENSIONS = frozenset(".png .jpg .jpeg .bmp .tif .tiff .webp .gif .ppm .pgm .pbm".split())
VIDEO_EXTENSIONS = frozenset(".mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg .wmv .flv .3gp".split())


@dataclass(frozen=True)
class Source:
    """One input: a video, or a sequence of images (a folder, a glob or one image)."""

    name: str
    kind: str  # "video" | "images"
    paths: tuple

    def __str__(self):
        return self.name


@dataclass
class Frame:
    """One frame of footage.

    Attributes
    ----------
    source : str
        The input file (the image's own path for image sequences).
    frame : int
        1-based frame number within its source (OpenFace's convention).
    timestamp : float
        Seconds from the start of a video; 0 for images.
    image : ndarray (H, W, 3) uint8 RGB, or None when the frame could not be decoded
    sequence : str
        The input it belongs to (a video, a folder, a glob): faces are tracked, and an LSTM
        run's state carried, within one sequence.
    """

    source: str
    frame: int
    timestamp: float
    image: object
    sequence: str = ""

    def __post_init__(self):
        self.sequence = self.sequence or self.source


def _is_glob(text):
    return any(c in text for c in "*?[")


def list_sources(inputs):
    """Resolve the ``INPUT`` arguments of ``featbench predict`` into :class:`Source` objects.

    Raises
    ------
    UsageError
        No input, or a glob that matches nothing.
    DataError
        A path that does not exist, or a folder without images or videos.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources = []
    for text in map(str, inputs):
        path = Path(text).expanduser()
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            images = tuple(str(p) for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS)
            videos = [p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS]
            if not images and not videos:
                raise DataError(f"{path}: folder holds no image or video "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))})")
            if images:
                sources.append(Source(str(path), "images", images))
            sources += [Source(str(p), "video", (str(p),)) for p in videos]
        elif path.is_file():
            kind = "images" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"
            sources.append(Source(str(path), kind, (str(path),)))
        elif _is_glob(text):
            matches = sorted(p for p in glob.glob(os.path.expanduser(text)) if os.path.isfile(p))
            if not matches:
                raise UsageError(f"{text}: the pattern matches no file")
            images = tuple(p for p in matches if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if images:
                sources.append(Source(text, "images", images))
            sources += [Source(p, "video", (p,)) for p in matches if p not in images]
        else:
            raise DataError(f"{path}: no such file or folder")
    if not sources:
        raise UsageError("no input: give a video, an image, a folder or a glob")
    return sources


def read_image(path):
    """Read an image file as upright 8-bit RGB, (H, W, 3) uint8.

    EXIF orientation is applied; an alpha channel is composited onto white (a transparent
    background is usually white where the picture was made); grayscale, palette and 16-bit
    images are converted.

    Raises
    ------
    DataError
        The file does not exist or is not an image (names it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    # featbench bounds the pixels itself (MAX_IMAGE_PIXELS, one line): PIL's multi-line warning
    # for images between its two thresholds would only come before it
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(path) as im:
            _check_pixels(path, *im.size)
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, met as it opens the file
        import re

        n = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(n.group(1)) / 1e6:.0f} megapixels" if n else "its size"
        raise DataError(f"{path}: {size} is more than featbench decodes "
                        f"({MAX_IMAGE_PIXELS / 1e6:.0f} megapixels): scale it down first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


#: the most pixels featbench decodes from one image (PIL's own refusal threshold: 2 x
#: ``Image.MAX_IMAGE_PIXELS``, about 179 megapixels); larger images are refused by their header
MAX_IMAGE_PIXELS = 2 * 89_478_485


def _check_pixels(path, width, height):
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: {width} x {height} pixels ({width * height / 1e6:.0f} megapixels) "
                        f"is more than featbench decodes ({MAX_IMAGE_PIXELS / 1e6:.0f} "
                        "megapixels): scale it down first")


def video_info(path):
    """Return ``(frames, fps, width, height)`` that the container declares (frames may be 0)."""
    import cv2

    cap = open_video(path)
    try:
        return (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()


#: a video that fails this many reads in a row (after at least one good frame) has ended
_MAX_BAD_READS = 8


def _video_frames(path, warnings=None):
    import cv2

    before = _identity(path)
    cap = open_video(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

        def stamp(k):
            return (k - 1) / fps if fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

        k, good, bad = 0, 0, 0
        while bad < _MAX_BAD_READS:
            ok, bgr = cap.read()
            if not ok:
                bad += 1  # damaged inside the video, or its end: known when a good one follows
                continue
            for _ in range(bad if good else 0):  # frames lost inside: rows without a face
                k += 1
                yield Frame(path, k, stamp(k), None)
            bad, good, k = 0, good + 1, k + 1
            yield Frame(path, k, stamp(k), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if good == 0:
            raise DataError(f"{path}: no frame could be decoded (damaged or unsupported video)")
        for _ in range(min(bad, max(0, declared - k))):  # lost at the end, within its length
            k += 1
            yield Frame(path, k, stamp(k), None)
    finally:
        cap.release()
    _check_read(path, good, declared, before, warnings)


#: frames a container's declared count may exceed the decodable ones by without a warning
#: (estimated counts of some containers are off by a frame or two)
_COUNT_SLACK = 2


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _check_read(path, decoded, declared, before, warnings):
    """Warn when fewer frames decoded than the container declares, or the file changed meanwhile.

    A video cut short (a copy in progress, a full disk) or replaced while it is read gives a
    short table that looks like a whole one; the warning is printed and kept in ``warnings``
    (predict's sidecar).
    """
    import sys

    notes = []
    if declared > 0 and decoded < declared - _COUNT_SLACK:
        notes.append(f"{path}: only {decoded} of the {declared} frames its container declares "
                     "could be read (cut short, damaged, or still being copied?)")
    if before is not None and _identity(path) != before:
        notes.append(f"{path}: the file changed while it was read (replaced or still being "
                     "written): its rows may mix two versions")
    for note in notes:
        print(f"featbench: warning: {note}", file=sys.stderr, flush=True)
        if warnings is not None:
            warnings.append(note)


def iter_frames(sources, warnings=None):
    """Yield every :class:`Frame` of ``sources`` (from :func:`list_sources`), in order.

    ``warnings``: a list that collects what went wrong without stopping (a video that ended
    before the frame count its container declares, one that changed while read).
    """
    for src in sources:
        if src.kind == "video":
            yield from _video_frames(src.paths[0], warnings)
        else:
            for k, p in enumerate(src.paths, start=1):
                yield Frame(p, k, 0.0, read_image(p), src.name)


def count_frames(sources):
    """Return the number of frames ``sources`` hold as far as known cheaply (for a progress bar)."""
    total = 0
    for src in sources:
        if src.kind == "video":
            total += max(0, video_info(src.paths[0])[0])
        else:
            total += len(src.paths)
    return total
