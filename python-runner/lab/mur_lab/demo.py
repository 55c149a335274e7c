"""python -m mur_lab.demo: one Fashion-MNIST model trained three ways, side by side.

The same MLP (same initial weights, same batches in the same order) trained
with torch.optim.Adam, with mur's Adam under the additive rule (the same
maths, computed by a local mur server) and with mur's Adam under the hybrid
rule at its defaults (gamma 0.9, lr_out 10 x lr; docs/update-rules.md,
section 6). The three take turns batch by batch, so whatever else the machine
does slows them alike. Prints test accuracy and milliseconds per batch
(zero_grad, forward, backward, step) for each, one line per epoch, a table at
the end, and writes a PNG of the curves.

    make demo
    python -m mur_lab.demo [--epochs 2] [--train-size 60000] [--out demo.png]
"""

import argparse
import copy
import os
import statistics
import tempfile
import time

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch
from torch import nn

import mur
from mur_lab.data import load
from mur_lab.progress import bar


def model():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


class Contender:
    """One optimizer on its own copy of the model, with its measurements."""

    def __init__(self, name, net, opt):
        self.name, self.net, self.opt = name, net, opt
        self.ms = []  # per batch: zero_grad + forward + backward + step
        self.loss = []  # per batch
        self.acc = []  # (batches seen, test accuracy)

    def train_batch(self, x, y, loss_fn):
        t0 = time.perf_counter()
        self.opt.zero_grad()
        loss = loss_fn(self.net(x), y)
        loss.backward()
        self.opt.step()
        self.ms.append((time.perf_counter() - t0) * 1e3)
        self.loss.append(loss.item())

    @torch.no_grad()
    def evaluate(self, x, y, seen):
        acc = (self.net(x).argmax(1) == y).float().mean().item()
        self.acc.append((seen, acc))
        return acc


def plot(contenders, batches_per_epoch, out):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for c in contenders:
        # Moving average over ~a tenth of an epoch: the raw per-batch loss is too noisy to compare.
        w = max(1, batches_per_epoch // 10)
        smooth = [statistics.fmean(c.loss[max(0, i - w + 1) : i + 1]) for i in range(len(c.loss))]
        ax_loss.plot([i / batches_per_epoch for i in range(1, len(smooth) + 1)], smooth, label=c.name)
        ax_acc.plot([s / batches_per_epoch for s, _ in c.acc], [a * 100 for _, a in c.acc], marker="o", label=c.name)
    ax_loss.set(xlabel="epoch", ylabel="training loss (moving average)", title="Fashion-MNIST MLP: training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy (10k test images)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=60000, help="the first N training images")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--evals", type=int, default=4, help="test-set evaluations per epoch (points of the curve)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "mur-demo.png"), help="the PNG of the curves")
    a = ap.parse_args(argv)
    for name in ("epochs", "train_size", "batch_size", "evals"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(a, name)}: must be at least 1")
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)  # leave the second core to the server
    xtr, ytr = (torch.from_numpy(v) for v in load("train"))
    xtr, ytr = xtr[: a.train_size], ytr[: a.train_size]
    xte, yte = (torch.from_numpy(v) for v in load("t10k"))
    base = model()  # one initialisation, copied into each contender

    with mur.LocalServer() as server:

        def remote(rule, net):
            # Only lr is given: the rule's own hyperparameters are the server's defaults.
            return mur.RemoteOptimizer(net.parameters(), optimizer="adam", rule=rule, server=server.address, lr=a.lr)

        nets = [copy.deepcopy(base) for _ in range(3)]
        contenders = [Contender("torch.optim.Adam", nets[0], torch.optim.Adam(nets[0].parameters(), lr=a.lr))]
        try:
            contenders.append(Contender("mur adam additive", nets[1], remote("additive", nets[1])))
            hybrid = remote("hybrid", nets[2])
            contenders.append(Contender("mur adam hybrid", nets[2], hybrid))
            g = hybrid.param_groups[0]
            lr_out = g["lr_out"] if g.get("lr_out") is not None else f"10 x lr = {10 * a.lr:g}"
            print(
                f"mur demo: Fashion-MNIST MLP, {len(xtr)} training images, {a.epochs} epoch(s), "
                f"batch {a.batch_size}, lr {a.lr:g}; server backend {server.backend}, "
                f"transport {contenders[1].opt.transport}"
            )
            print(f"  hybrid at its defaults: gamma {g['gamma']:g}, lr_in {g['lr_in']:g}, lr_out {lr_out}")
            train(contenders, xtr, ytr, xte, yte, a)
        finally:
            for c in contenders[1:]:
                c.opt.close()

    batches_per_epoch = -(-len(xtr) // a.batch_size)
    plot(contenders, batches_per_epoch, a.out)
    rows = [(c.name, c.acc[-1][1] * 100, statistics.median(c.ms), sum(c.ms) / 1e3) for c in contenders]
    print()
    print(f"{'optimizer':<20} {'test acc %':>10} {'ms/batch':>9} {'train s':>8}")
    for name, acc, ms, total in rows:
        print(f"{name:<20} {acc:>10.2f} {ms:>9.2f} {total:>8.1f}")
    print(f"(ms/batch: median over {len(contenders[0].ms)} batches of zero_grad + forward + backward + step)")
    print(f"curves: {os.path.abspath(a.out)}")
    return {name: acc for name, acc, _, _ in rows}


def train(contenders, xtr, ytr, xte, yte, a):
    loss_fn = nn.CrossEntropyLoss()
    n = len(xtr)
    starts = list(range(0, n, a.batch_size))
    # Evaluation points: evals per epoch, evenly spread, the last at the epoch's end.
    points = {max(1, round(j * len(starts) / a.evals)) for j in range(1, a.evals + 1)}
    order = torch.Generator().manual_seed(a.seed)
    seen = 0
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(n, generator=order)  # the same batches, in the same order, for all
        first = len(contenders[0].ms)
        progress = bar(starts, desc=f"epoch {epoch}/{a.epochs}", unit="batch")
        for k, i in enumerate(progress, 1):
            idx = perm[i : i + a.batch_size]
            x, y = xtr[idx], ytr[idx]
            for c in contenders:  # turn by turn: a noisy moment slows all three alike
                c.train_batch(x, y, loss_fn)
            seen += 1
            if k in points:
                for c in contenders:
                    c.evaluate(xte, yte, seen)
        print(
            f"epoch {epoch}: "
            + " | ".join(
                f"{c.name} {c.acc[-1][1] * 100:.2f}% {statistics.median(c.ms[first:]):.2f} ms/batch" for c in contenders
            )
        )


if __name__ == "__main__":
    main()
