"""A finished unit's tensors in a run's work folder, and JSON records: never a pickle.

A run's model is written through :mod:`featbench.core.modelfile` (the one model format); while
a run trains, each finished unit waits in ``results/<ds>/models/.<run>.partial/`` as one
safetensors file (:func:`write_tensors`), so a killed run skips it when rerun.
"""

import json
from pathlib import Path

import numpy as np

from featbench.core.errors import StoreError
from featbench.core.workspace import atomic_path, atomic_write_text


def write_tensors(path, tensors):
    """Write ``{name: tensor or array}`` to the safetensors file ``path`` (through a temp file)."""
    import torch
    from safetensors.torch import save_file

    out = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)))
           .contiguous().clone() for k, v in tensors.items()}
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
