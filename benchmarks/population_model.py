"""The models that benchmarks/population.py gives every simulator: the MLP 64-64-10 and a small CNN (a featherfl model plug-in:
``--model population_model:mlp`` with benchmarks/ on the path). Its initial weights come from a file the benchmark
writes once (``model.init``), so both start from the same numbers."""

import torch.nn as nn


def mlp(input_shape, num_classes, **_):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, num_classes))


def cnn(input_shape, num_classes, **_):
    """A small CNN for 1x28x28 images (MNIST): two 5x5 convolutions (8 and 16 channels), each
    followed by ReLU and 2x2 max pooling, then one linear layer; 5,994 parameters at 10 classes.
    No BatchNorm or dropout, so featherfl can train a cohort of it batched."""
    c = input_shape[0]
    side = ((input_shape[1] - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * side * side, num_classes),
    )
