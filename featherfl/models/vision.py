"""Small image classifiers used across the methods.

All take ``input_shape = (C, H, W)`` and work from 8x8 (digits) to 32x32 (CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import nn

from featherfl.models.registry import register_model

ACTIVATIONS = {
    "relu": nn.ReLU,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}")


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


@register_model("mlp")
def mlp(input_shape, num_classes, width=0, activation="relu", norm="none", **_):
    """Two hidden layers. ``width`` = hidden units (default 128)."""
    h = width or 128
    act = ACTIVATIONS[activation]
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h), act(), nn.Linear(h, h), act(), nn.Linear(h, num_classes))


class _ConvNet(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@register_model("lenet")
def lenet(input_shape, num_classes, width=0, activation="relu", norm="none", **_):
    """LeNet-5 style: conv5-pool-conv5-pool-fc-fc-fc, padded so 8x8 inputs fit."""
    c = input_shape[0]
    w = width or 6
    act = ACTIVATIONS[activation]
    features = nn.Sequential(
        nn.Conv2d(c, w, 5, padding=2), make_norm(norm, w), act(), nn.MaxPool2d(2),
        nn.Conv2d(w, 16, 5, padding=2), make_norm(norm, 16), act(), nn.MaxPool2d(2),
    )
    n = _flat_size(features, input_shape)
    head = nn.Sequential(nn.Linear(n, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes))
    return _ConvNet(features, head)


@register_model("lenet-baffle")
def lenet_baffle(input_shape, num_classes, width=0, activation="hardswish", norm="none", **_):
    """The LeNet of BAFFLE's MNIST experiments (Feng et al. 2023, Sec. 4; the authors' code):
    conv5x5 (16, padding 2), activation, max-pool 2, conv5x5 (4 x 16, padding 2), activation,
    global average pool, one linear layer. No norm by default (Sec. 4.4) and few parameters
    (26,730 at 1x28x28 / 10 classes): a zeroth-order estimate's quality falls with the
    parameter count. ``width`` sets the first layer's channels (default 16)."""
    w = width or 16
    act = ACTIVATIONS[activation]
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], w, 5, padding=2), make_norm(norm, w), act(), nn.MaxPool2d(2),
        nn.Conv2d(w, 4 * w, 5, padding=2), make_norm(norm, 4 * w), act(), nn.AdaptiveAvgPool2d(1),
    )
    return _ConvNet(features, nn.Linear(4 * w, num_classes))


@register_model("cnn")
def cnn(input_shape, num_classes, width=0, activation="relu", norm="none", padding=1, **_):
    """The FD paper's CNN layout (Jeong et al. 2018, Sec. 4): 2 conv layers + max-pool, then 2
    dense layers; padded convolutions (see ``cnn-fd`` for the paper's exact network)."""
    c = input_shape[0]
    w = width or 32
    act = ACTIVATIONS[activation]
    features = nn.Sequential(
        nn.Conv2d(c, w, 3, padding=padding), make_norm(norm, w), act(),
        nn.Conv2d(w, 2 * w, 3, padding=padding), make_norm(norm, 2 * w), act(), nn.MaxPool2d(2),
    )
    n = _flat_size(features, input_shape)
    head = nn.Sequential(nn.Linear(n, 128), act(), nn.Linear(128, num_classes))
    return _ConvNet(features, head)


@register_model("cnn-fd")
def cnn_fd(input_shape, num_classes, width=0, activation="relu", norm="none", **_):
    """The FD paper's CNN exactly: conv3x3-32, conv3x3-64 (unpadded), 2x2 max-pool, dense-128,
    dense-10; on 28 x 28 MNIST 1,199,648 weights (1,199,882 parameters with biases)."""
    return cnn(input_shape, num_classes, width=width, activation=activation, norm=norm, padding=0)


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, act):
        super().__init__()
        self.n1 = make_norm(norm, cin)
        self.a1 = act()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n2 = make_norm(norm, cout)
        self.a2 = act()
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = self.a1(self.n1(x))
        y = self.c1(o)
        y = self.c2(self.a2(self.n2(y)))
        return y + (x if self.short is None else self.short(o))


@register_model("wrn-10-2")
def wrn_10_2(input_shape, num_classes, width=0, activation="relu", norm="group", **_):
    """Wide ResNet depth 10, widen factor 2 (one pre-activation block per stage), group norm by default."""
    if norm == "none":
        norm = "group"
    k = width or 2
    act = ACTIVATIONS[activation]
    ch = [16, 16 * k, 32 * k, 64 * k]
    return nn.Sequential(
        nn.Conv2d(input_shape[0], ch[0], 3, 1, 1, bias=False),
        _WideBlock(ch[0], ch[1], 1, norm, act),
        _WideBlock(ch[1], ch[2], 2, norm, act),
        _WideBlock(ch[2], ch[3], 2, norm, act),
        make_norm(norm, ch[3]),
        act(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(ch[3], num_classes),
    )
