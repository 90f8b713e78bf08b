"""Entry points for the discover tests: a model without a framework switch for
activation checkpointing, and data with labels for it."""
import torch
from torch import nn
from torch.utils.data import TensorDataset


class BlockMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def block_mlp():
    torch.manual_seed(3)
    return BlockMLP()


def gaussian_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long() + 2 * (x[:, 2] > 0).long()
    return {"train": TensorDataset(x, y), "eval": TensorDataset(x[:64], y[:64])}
