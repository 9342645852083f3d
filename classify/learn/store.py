"""Tensors and manifests of learned networks on disk: safetensors + JSON, never a pickle.

Until :mod:`featbench.core.modelfile` (the one model format, helper *save*) lands on main, the
four calls the learned methods save and load through live here with its names; they then
become imports from there.
"""

import json
from pathlib import Path

import numpy as np

from featbench.core.errors import StoreError
from featbench.core.workspace import atomic_path, atomic_write_text

MANIFEST = "manifest.json"


def write_tensors(path, tensors, *, half=False):
    """Write ``{name: tensor or array}`` to the safetensors file ``path`` (through a temp file)."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for k, v in tensors.items():
        t = torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v.detach().cpu()
        if half and t.is_floating_point():
            t = t.half()
        out[k] = t.contiguous().clone()
    with atomic_path(path) as tmp:
        save_file(out, str(tmp))
    return Path(path)


def read_tensors(path):
    """Return ``{name: tensor}`` of a safetensors file (float16 ones as stored)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable safetensors file ({exc})") from None


def write_manifest(folder, manifest):
    """Write ``folder/manifest.json``."""
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=1, default=str) + "\n")


def read_manifest(folder):
    """Return the manifest of a run folder (StoreError naming the file when missing or bad)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except OSError:
        raise StoreError(f"{path}: no manifest (rerun the run)") from None
    except ValueError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None


def write_json(path, obj):
    """Write ``obj`` as indented JSON (numpy values as numbers), through a temporary file."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
