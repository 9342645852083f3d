"""Networks of Method A that no library ships: ZFNet, CNN-F / M / S (Chatfield et al. 2014), VGG-Face.

Every network here has the layout of torchvision's AlexNet / VGG — ``features`` (conv blocks),
``avgpool``, ``classifier`` = (fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8) — so one truncation
(:func:`code_module`) serves them all, and the fc6 code is ``classifier[1]``'s output.

CNN-F / M / S follow PROTOCOL.md's table and MatConvNet's ``imagenet-vgg-f/m/s`` models (whose
pooling pads one pixel on the bottom and right, ``[0 1 0 1]``); with 224x224 inputs conv5 ends at
6x6, so fc6 sees 256*6*6 (CNN-F) or 512*6*6 (CNN-M / S) values, as MatConvNet's 6x6 fc6 filters.
"""

# torch at the top is fine here: only the registry's constructors import this module, lazily
import torch
from torch import nn


def _pool(kernel, stride, *, pad_br=True):
    """Max pooling as MatConvNet's, padded by one pixel at the bottom and right.

    Zero padding equals MatConvNet's -inf padding here because every pool follows a ReLU (and
    LRN of a non-negative input is non-negative).
    """
    pool = nn.MaxPool2d(kernel, stride)
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), pool) if pad_br else pool


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` with a faster forward, same parameters and results.

    torch's LRN pools the squares with a 3-d average pool, which on 2 CPU cores took more time
    than all of CNN-F's convolutions; summing channel-shifted slices of the squares gives the
    same numbers (same zero padding, same division by n) in a few element-wise passes (2.7x
    faster on CNN-F's conv1 output).
    """

    def forward(self, x):
        if x.dim() != 4:
            return super().forward(x)
        sq = x * x
        acc = sq.clone()
        c = x.shape[1]
        for d in range(1, min(self.size // 2, c - 1) + 1):  # channels before each channel
            acc[:, d:] += sq[:, :-d]
        for d in range(1, min((self.size - 1) // 2, c - 1) + 1):  # channels after it
            acc[:, :-d] += sq[:, d:]
        return x / acc.mul_(self.alpha / self.size).add_(self.k).pow_(self.beta)


def _lrn():
    """Local response normalisation as Caffe / MatConvNet: n=5, alpha=1e-4, beta=0.75, k=1.

    MatConvNet's ``norm`` param is ``[5 1 1e-4/5 0.75]`` (its alpha is not divided by n, torch's
    is); :func:`extract.weights.convert_matconvnet` copies a file's own param onto these modules.
    """
    return LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


def _classifier(in_features, num_classes):
    return nn.Sequential(
        nn.Linear(in_features, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )


def _conv(cin, cout, k, stride=1, pad=0):
    return [nn.Conv2d(cin, cout, k, stride, pad), nn.ReLU(inplace=True)]


#: conv layer configurations (out, kernel, stride, pad) and what follows each conv
ARCHS = {
    # Chatfield et al. 2014, table 1 (PROTOCOL.md)
    "cnn_f": [(64, 11, 4, 0, "lrn", (3, 2)), (256, 5, 1, 2, "lrn", (3, 2)), (256, 3, 1, 1, None, None),
              (256, 3, 1, 1, None, None), (256, 3, 1, 1, None, (3, 2))],
    "cnn_m": [(96, 7, 2, 0, "lrn", (3, 2)), (256, 5, 2, 1, "lrn", (3, 2)), (512, 3, 1, 1, None, None),
              (512, 3, 1, 1, None, None), (512, 3, 1, 1, None, (3, 2))],
    "cnn_s": [(96, 7, 2, 0, "lrn", (3, 3)), (256, 5, 1, 1, None, (2, 2)), (512, 3, 1, 1, None, None),
              (512, 3, 1, 1, None, None), (512, 3, 1, 1, None, (3, 3))],
    # Zeiler & Fergus 2014, fig. 3: 7x7/2 conv1, 5x5/2 conv2, 3x3 pools of stride 2
    "zfnet": [(96, 7, 2, 1, "lrn", (3, 2)), (256, 5, 2, 0, "lrn", (3, 2)), (384, 3, 1, 1, None, None),
              (384, 3, 1, 1, None, None), (256, 3, 1, 1, None, (3, 2))],
}

#: spatial size of conv5's pooled output for a 224x224 input
FINAL_GRID = 6


def build_convnet(arch, *, num_classes=1000):
    """Build ZFNet or CNN-F / M / S as a torchvision-AlexNet-shaped module.

    Parameters
    ----------
    arch : {"zfnet", "cnn_f", "cnn_m", "cnn_s"}
    num_classes : int
        Size of fc8.

    Returns
    -------
    torch.nn.Module
        With ``features``, ``avgpool`` (identity: the 224 input already ends at 6x6) and
        ``classifier``; input (N, 3, 224, 224), output (N, num_classes).
    """
    layers, cin = [], 3
    for cout, k, stride, pad, norm, pool in ARCHS[arch]:
        layers += _conv(cin, cout, k, stride, pad)
        if norm:
            layers.append(_lrn())
        if pool:
            layers.append(_pool(*pool))
        cin = cout

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.Identity()
            self.classifier = _classifier(cin * FINAL_GRID * FINAL_GRID, num_classes)

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    Net.__name__ = Net.__qualname__ = arch.upper().replace("_", "")
    return Net()


def build_vgg_face(*, num_classes=2622):
    """VGG-Face (Parkhi et al. 2015): VGG-16 with a 2622-identity fc8.

    Built as torchvision's VGG-16 so that its layer names are ``features.N`` / ``classifier.N``;
    :func:`extract.weights.convert_vgg_face_dag` maps the published PyTorch port's names.
    """
    from torchvision.models import vgg16

    return vgg16(weights=None, num_classes=num_classes)


def code_module(model, *, fc_index=1):
    """Return the network truncated after fc6 + ReLU: features, avgpool, flatten, fc6, ReLU.

    A truncated module (rather than a forward hook) skips fc7 / fc8 entirely and keeps
    channels-last and ``torch.inference_mode`` free of Python callbacks.

    Parameters
    ----------
    model : torch.nn.Module
        An AlexNet / VGG-shaped network (``features``, ``avgpool``, ``classifier``).
    fc_index : int
        Index in ``classifier`` of the last module to keep (AlexNet's classifier starts with
        a dropout, so its fc6 ReLU is at 2).
    """
    return nn.Sequential(model.features, model.avgpool, nn.Flatten(1),
                         *list(model.classifier.children())[:fc_index + 1])
