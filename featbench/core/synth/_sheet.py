"""Contact sheet: a PNG grid of sample frames with the AUs active in each written underneath."""

from pathlib import Path

import numpy as np

from featbench.core.errors import DataError, UsageError
from featbench.core.faces import iter_frames
from featbench.core.workspace import save_png

_TILE_W = 200
_TEXT_H = 30


def _pick(table, n, seed):
    """Half the picks among frames with an active AU (so the sheet shows AUs), the rest at random."""
    rng = np.random.default_rng(seed)
    labels = table.labels()
    active = np.flatnonzero((labels == 1).any(1))
    k_act = min(len(active), n // 2 + n % 2)
    pick = list(rng.choice(active, k_act, replace=False)) if k_act else []
    rest = np.setdiff1d(np.arange(len(table)), pick)
    pick += list(rng.choice(rest, min(len(rest), n - len(pick)), replace=False))
    return sorted(int(i) for i in pick)


def _caption(table, i):
    row = table.frames.iloc[i]
    on = [au for au in table.aus if row[au] == 1]
    name = f"{row['subject']} #{int(row['frame'])}"
    if "expression" in table.frames.columns:
        name += f" {row['expression']}"
    return name, (" ".join(a[2:] for a in on) if on else "no AU")


def contact_sheet(table, out_png, *, n=24, seed=0):
    """Write a PNG grid of ``n`` frames of ``table``; under each, its subject, frame and active AUs.

    Parameters
    ----------
    table : FrameTable
    out_png : str or Path
    n : int
        Frames on the sheet (1-400), picked with ``seed``: half among frames with an active AU.

    Returns
    -------
    Path
        ``out_png``.
    """
    import cv2

    if not 1 <= int(n) <= 400:
        raise UsageError(f"--n {n}: must be between 1 and 400")
    if len(table) == 0:
        raise DataError(f"{table.root}: no frames to show")
    rows = _pick(table, int(n), seed)
    tiles = []
    for i, rgb in iter_frames(table, rows):
        h, w = rgb.shape[:2]
        th = int(round(h * _TILE_W / w))
        img = cv2.resize(rgb, (_TILE_W, th), interpolation=cv2.INTER_AREA)
        tile = np.full((th + _TEXT_H, _TILE_W, 3), 255, np.uint8)
        tile[:th] = img
        name, aus = _caption(table, i)
        cv2.putText(tile, name, (3, th + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (90, 90, 90), 1, cv2.LINE_AA)
        cv2.putText(tile, aus, (3, th + 26), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        raise DataError(f"{table.root}: none of the sampled frames could be read")
    th = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
    cols = int(np.ceil(np.sqrt(len(tiles) * 1.5)))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % cols)
    grid = np.concatenate([np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)], 0)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_png(np.ascontiguousarray(grid), out)  # marked: a rerun may replace it
