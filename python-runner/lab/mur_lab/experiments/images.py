"""Fashion-MNIST through the mur server: the models, the train / validation /
test split, and one training run (accuracy curve, divergence)."""

import math
import time

import torch
from torch import nn

from mur_lab import models
from mur_lab.data import load
from mur_lab.experiments import spaces

LR_RANGE = (1e-5, 1.0)
BATCH = 128
# A run "trains" (robustness) when its accuracy reaches TRAINS; "faster" counts
# the steps to TARGET. Both fixed before the full run: 80 % is what the
# additive MLP of the previous report passed in its first epoch on 60k images.
TRAINS = 0.5
TARGET = 0.80


class _Block(nn.Module):
    """A basic residual block: two 3x3 convolutions with batch norm, and a
    1x1 projection on the shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def resnet(width=8):
    """A 10-layer ResNet sized for 2 CPU cores: a stride-2 stem (14 x 14), two
    blocks of `width` channels, two of 2 x width at 7 x 7, global pooling."""
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, 2, 1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        _Block(w, w, 1),
        _Block(w, w, 1),
        _Block(w, 2 * w, 2),
        _Block(2 * w, 2 * w, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * w, 10),
    )


MODELS = {"mlp": lambda: models.mlp(128), "cnn": lambda: models.cnn(16, 32), "resnet": resnet}


class Data:
    """train_size training and val_size validation images, disjoint, drawn from
    the training set with a fixed permutation; the first test_size test
    images, of which the first curve_size give the accuracy curves."""

    def __init__(self, train_size, val_size, test_size, curve_size, seed=0):
        x, y = load("train")
        xt, yt = load("t10k")
        if train_size + val_size > len(x):
            raise ValueError(f"train_size + val_size = {train_size + val_size} > {len(x)} training images")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        self.x, self.y = x[idx[:train_size]], y[idx[:train_size]]
        self.xv, self.yv = x[idx[train_size : train_size + val_size]], y[idx[train_size : train_size + val_size]]
        self.xt, self.yt = torch.from_numpy(xt[:test_size]), torch.from_numpy(yt[:test_size])
        self.curve_size = curve_size

    def steps_per_epoch(self):
        return math.ceil(len(self.x) / BATCH)


def accuracy(net, x, y):
    net.eval()
    with torch.no_grad():
        right = sum((net(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item() for i in range(0, len(x), 1000))
    net.train()
    return right / len(x)


def train(model, optimizer, rule, config, seed, data, epochs, address, curve_per_epoch=0, final_on="val", bar=None):
    """One run. Returns {"final": accuracy on the validation ("val") or test
    ("test") set, or None when diverged, "diverged", "curve": [[step, test
    accuracy on the curve subset]] (curve_per_epoch points per epoch, from step
    0), "steps_per_epoch", "seconds"}."""
    torch.manual_seed(seed)
    net = MODELS[model]()
    spe = data.steps_per_epoch()
    params = list(net.parameters())
    opt, sched = spaces.make(params, optimizer, rule, config, address, spe * epochs, seed)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    every = max(1, spe // curve_per_epoch) if curve_per_epoch else None
    xc, yc = data.xt[: data.curve_size], data.yt[: data.curve_size]
    curve, step, diverged, start = [], 0, False, time.time()
    try:
        if every:
            curve.append([0, accuracy(net, xc, yc)])
        for _ in range(epochs):
            perm = torch.randperm(len(data.x), generator=g)
            for i in range(0, len(perm), BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                loss = loss_fn(net(data.x[idx]), data.y[idx])
                if not torch.isfinite(loss):
                    diverged = True
                    break
                loss.backward()
                if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                    diverged = True  # the server refuses non-finite gradients
                    break
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                if every and (step % every == 0 or step == spe * epochs):
                    curve.append([step, accuracy(net, xc, yc)])
            if diverged:
                break
        if not diverged and not all(torch.isfinite(p).all() for p in params):
            diverged = True
        final = None
        if not diverged:
            final = accuracy(net, *((data.xv, data.yv) if final_on == "val" else (data.xt, data.yt)))
    finally:
        opt.close()
    if bar is not None and step < spe * epochs:
        bar.update(spe * epochs - step)
    return {
        "final": final,
        "diverged": diverged,
        "curve": curve,
        "steps_per_epoch": spe,
        "seconds": time.time() - start,
    }


def steps_to(curve, target):
    """The first evaluated step whose curve accuracy reaches target, or None."""
    return next((s for s, a in curve if a >= target), None)
