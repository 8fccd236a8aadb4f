"""The conditional GAN that FAug trains on the server (Jeong et al. 2018, Sec. 3; Mirza & Osindero 2014).

Both networks are MLPs conditioned on the label by concatenating a learned label
embedding to their input, the paper's default shape: generator
noise (+ label) -> 256 -> 512 -> 1024 -> pixels (LeakyReLU, BatchNorm on the
wider layers, tanh output in [-1, 1]); discriminator pixels (+ label) ->
512 -> 512 -> 512 -> 1 real/fake logit. Not registered as a classifier: these
are not ``model.name`` choices.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, noise_dim: int, num_classes: int, out_shape: tuple[int, ...], hidden: list[int]):
        super().__init__()
        self.noise_dim = noise_dim
        self.out_shape = tuple(out_shape)
        self.label_emb = nn.Embedding(num_classes, num_classes)
        layers: list[nn.Module] = []
        width = noise_dim + num_classes
        for i, h in enumerate(hidden):
            layers.append(nn.Linear(width, h))
            if i > 0:
                layers.append(nn.BatchNorm1d(h, momentum=0.1))
            layers.append(nn.LeakyReLU(0.2))
            width = h
        layers += [nn.Linear(width, math.prod(self.out_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.label_emb(labels)], 1)
        return self.net(h).view(-1, *self.out_shape)


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, in_shape: tuple[int, ...], hidden: list[int]):
        super().__init__()
        self.label_emb = nn.Embedding(num_classes, num_classes)
        layers: list[nn.Module] = []
        width = math.prod(in_shape) + num_classes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), self.label_emb(labels)], 1)).squeeze(1)
