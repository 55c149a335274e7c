"""python -m mur.demo: train a Fashion-MNIST classifier through a mur server.

The model's maths stays in PyTorch; every optimizer step (Adam direction,
hybrid update rule) is computed by a local mur server.
"""
import argparse
import time

import torch
from torch import nn
import sys

from tqdm import tqdm

import mur
from mur.data import load


def model():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--rule", default="hybrid")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--server", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)  # leave the second core to the server
    xtr, ytr = (torch.from_numpy(v) for v in load("train"))
    xte, yte = (torch.from_numpy(v) for v in load("t10k"))
    net = model()
    opt = mur.RemoteOptimizer(net.parameters(), optimizer=a.optimizer, rule=a.rule, server=a.server,
                              lr=a.lr, gamma=a.gamma)
    backend = opt._local.backend if opt._local else a.server
    print(f"mur demo: {a.optimizer} x {a.rule} (lr={a.lr}, gamma={a.gamma}) on a server with backend {backend}")
    loss_fn = nn.CrossEntropyLoss()
    start = time.time()
    try:
        for epoch in range(1, a.epochs + 1):
            perm = torch.randperm(len(xtr))
            bar = tqdm(range(0, len(xtr), a.batch_size), disable=not sys.stderr.isatty(), desc=f"epoch {epoch}/{a.epochs}", unit="batch")
            for i in bar:
                idx = perm[i:i + a.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
                if i % (20 * a.batch_size) == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            with torch.no_grad():
                acc = (net(xte).argmax(1) == yte).float().mean().item()
            print(f"epoch {epoch}: test accuracy {acc * 100:.2f}%")
    finally:
        opt.close()
    print(f"final test accuracy {acc * 100:.2f}% after {a.epochs} epochs in {time.time() - start:.0f} s")
    return acc


if __name__ == "__main__":
    main()
