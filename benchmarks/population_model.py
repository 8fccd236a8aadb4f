"""The MLP 64-64-10 that benchmarks/population.py gives both simulators (a featherfl model plug-in:
``--model population_model:mlp`` with benchmarks/ on the path). Its initial weights come from a file the benchmark
writes once (``model.init``), so both start from the same numbers."""

import torch.nn as nn


def mlp(input_shape, num_classes, **_):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, num_classes))
