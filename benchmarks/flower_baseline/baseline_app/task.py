"""Model, data and train/test loops, as a Flower example's task.py has them.

Same job as featherfl's FedAvg default: the digits MLP (64-128-128-10, ReLU), SGD
lr 0.05 momentum 0.9, 2 local epochs of batch 32, and the same client partitions
(featherfl's Dirichlet split for seed 0), so only the framework differs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


_DATA = {}


def _prepared(num_partitions: int, seed: int):
    key = (num_partitions, seed)
    if key not in _DATA:
        from featherfl.schema import build_config
        from featherfl.experiment import prepare

        _DATA[key] = prepare(build_config(overrides=[("clients", num_partitions), ("seed", seed)]))
    return _DATA[key]


def load_data(partition_id: int, num_partitions: int, batch_size: int, seed: int = 0):
    p = _prepared(num_partitions, seed)
    part = p.client_data[partition_id]
    g = torch.Generator().manual_seed(seed * 1000 + partition_id)
    return DataLoader(TensorDataset(part.x, part.y), batch_size=batch_size, shuffle=True, generator=g)


def load_test(num_partitions: int, seed: int = 0):
    p = _prepared(num_partitions, seed)
    return DataLoader(TensorDataset(p.dataset.test_x, p.dataset.test_y), batch_size=512)


def train(net, trainloader, epochs, lr, momentum, device="cpu"):
    net.to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device="cpu"):
    net.to(device)
    net.eval()
    criterion = nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for x, y in testloader:
            out = net(x.to(device))
            loss += criterion(out, y.to(device)).item() * len(y)
            correct += (out.argmax(1) == y.to(device)).sum().item()
    n = len(testloader.dataset)
    return loss / n, correct / n
