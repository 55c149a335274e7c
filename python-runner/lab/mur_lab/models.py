"""Fashion-MNIST models: the MLP and the CNN used by validation, the demo-size runs and the
experiments, and a small transformer and a wide MLP for the training benchmark (mur_lab.bench_train)."""

import torch
from torch import nn


def mlp(hidden=128):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def wide_mlp(hidden=2048):
    """An MLP whose optimizer step is a real share of a batch: 784 -> 2048 -> 2048 -> 10,
    5.8M parameters in six tensors, so a batch of 128 spends about as long in AdamW's
    step as in forward and backward (mur_lab.bench_train's overlap rows)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def cnn(c1=16, c2=32):
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, 10),
    )


class PatchTransformer(nn.Module):
    """A small pre-norm transformer encoder over image patches: each ``patch`` x
    ``patch`` square of the 28 x 28 image is a token (4 tokens of 196 pixels at 14:
    few tokens keep a batch's forward and backward short beside its optimizer step),
    embedded to ``d_model`` plus a learned position; ``layers`` encoder layers
    (``heads`` heads, feed-forward ``2 d_model``, no dropout); the tokens' mean,
    normalised, classified. 0.56M parameters at the defaults."""

    def __init__(self, d_model=128, layers=4, heads=4, patch=14, side=28, classes=10):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * patch, d_model)
        self.position = nn.Parameter(torch.zeros(1, (side // patch) ** 2, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        # No nested tensors: they are for padded inference, and torch 2.x warns that norm_first excludes them.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        k = self.patch
        patches = x.unfold(2, k, k).unfold(3, k, k).reshape(len(x), -1, k * k)  # (batch, tokens, k * k)
        return self.head(self.norm(self.encoder(self.embed(patches) + self.position).mean(1)))


def transformer(d_model=128, layers=4, heads=4, patch=14):
    return PatchTransformer(d_model, layers, heads, patch)


class PixelBag(nn.Module):
    """A sparse-gradient model: each pixel's intensity, cut into ``levels``
    levels, is a token of its own (position x level: 784 x 8 rows); the image
    is the sum of its tokens' embeddings (an ``EmbeddingBag`` with
    ``sparse=True``: a batch touches a few of the rows), classified by a
    linear layer. Parameter 0 is the table, for SparseAdam."""

    def __init__(self, dim=32, levels=8, side=28, classes=10):
        super().__init__()
        self.levels, self.pixels = levels, side * side
        self.table = nn.EmbeddingBag(self.pixels * levels, dim, mode="sum", sparse=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        level = (x.reshape(len(x), -1) * self.levels).long().clamp_(0, self.levels - 1)
        ids = torch.arange(self.pixels, device=x.device) * self.levels + level
        return self.head(self.table(ids))


def bag(dim=32, levels=8):
    return PixelBag(dim, levels)
