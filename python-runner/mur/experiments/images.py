"""Fashion-MNIST through the mur server: accuracy per epoch for every
optimizer x rule x seed, and a learning-rate sweep (sensitivity)."""
import time

import torch
from torch import nn

import mur
from mur import models
from mur.data import load

# Learning rates of the image runs, per optimizer. The multiplicative term
# gets lr_out = OUT_SCALE x lr and lr_in = 1: with lr_out = lr it barely moves
# (a step is at most lr_out |theta|), and the quick sensitivity sweep put the
# multiplicative optimum 10-100x above the additive one. Hybrid gamma = 0.9.
LRS = {"adam": 1e-3, "sgd": 0.05, "rmsprop": 1e-3, "adagrad": 1e-2}
EXTRA = {"sgd": {"momentum": 0.9}}
GAMMA = 0.9
OUT_SCALE = 10.0


MODELS = {"mlp": lambda: models.mlp(128), "cnn": lambda: models.cnn(16, 32)}


class Data:
    def __init__(self, train_size, test_size):
        x, y = load("train")
        xt, yt = load("t10k")
        self.x, self.y = torch.from_numpy(x[:train_size]), torch.from_numpy(y[:train_size])
        self.xt, self.yt = torch.from_numpy(xt[:test_size]), torch.from_numpy(yt[:test_size])


def hypers(optimizer, rule, lr=None, scale_out=True):
    lr = LRS[optimizer] if lr is None else lr
    h = {"lr": lr, **EXTRA.get(optimizer, {})}
    if rule in ("multiplicative", "hybrid"):
        h.update(lr_in=1.0, lr_out=lr * (OUT_SCALE if scale_out else 1.0))
    if rule == "hybrid":
        h["gamma"] = GAMMA
    return h


def train(model_name, optimizer, rule, seed, data, epochs, address, lr=None, batch=128, bar=None, scale_out=True):
    """Test accuracy after each epoch, trained through the server."""
    torch.manual_seed(seed)
    net = MODELS[model_name]()
    opt = mur.RemoteOptimizer(net.parameters(), optimizer=optimizer, rule=rule, server=address, **hypers(optimizer, rule, lr, scale_out))
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    acc, start = [], time.time()
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(data.x), generator=g)
            for i in range(0, len(perm), batch):
                idx = perm[i:i + batch]
                opt.zero_grad()
                loss = loss_fn(net(data.x[idx]), data.y[idx])
                if not torch.isfinite(loss):
                    break
                loss.backward()
                opt.step()
                if bar is not None:
                    bar.update(1)
            with torch.no_grad():
                acc.append((net(data.xt).argmax(1) == data.yt).float().mean().item())
    finally:
        opt.close()
    return {"accuracy": acc, "seconds": time.time() - start}


def epochs_to(acc, target):
    """The first epoch (1-based) whose accuracy reaches target, or None."""
    return next((i + 1 for i, a in enumerate(acc) if a >= target), None)
