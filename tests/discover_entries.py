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


def batchnorm_mlp():
    """An MLP with BatchNorm: statistics a discovery with --bn-stats batch trains."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 4))


def gaussian_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long() + 2 * (x[:, 2] > 0).long()
    return {"train": TensorDataset(x, y), "eval": TensorDataset(x[:64], y[:64])}


def gaussian_train_only():
    """The Gaussian data without an evaluation split: scored on the training data."""
    return {"train": gaussian_data()["train"]}


def gaussian_empty_eval():
    data = gaussian_data()
    return {"train": data["train"], "eval": TensorDataset(torch.zeros(0, 8),
                                                          torch.zeros(0, dtype=torch.long))}


def gaussian_odd_eval():
    """An evaluation split of 65 samples: with batches of 16 the last holds one."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(65, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long() + 2 * (x[:, 2] > 0).long()
    return {"train": gaussian_data()["train"], "eval": TensorDataset(x, y)}


class AttentionClassifier(nn.Module):
    """8 features → one token through a transformer layer (nn.MultiheadAttention) → 4 classes."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.encoder(self.inp(x).unsqueeze(1)).squeeze(1))


def attention_classifier():
    torch.manual_seed(5)
    return AttentionClassifier()


def random_subnetwork_files(folder, labels, density: float, seed: int):
    """(one random subnetwork file per label over block_mlp's linear weights,
    the model's weights file) in ``folder``: what the analyze tests compare."""
    import subind_fast as sf

    model = block_mlp()
    g = torch.Generator().manual_seed(seed)
    files = []
    for label in labels:
        masks = {f"{n}.weight": torch.rand(m.weight.shape, generator=g) < density
                 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        files.append(str(sf.Subnetwork.from_masks(masks).save(folder / f"{label}.safetensors")))
    weights = folder / "w.pt"
    torch.save(model.state_dict(), weights)
    return files, weights
