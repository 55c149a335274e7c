"""python -m mur_lab.state_dtype: the training effect of bfloat16 and q8 optimizer state.

Two models, each trained from the same initial weights on the same batches by
torch.optim.Adam, by mur's Adam (additive rule) with float32 state, by mur's
Adam with state_dtype="bfloat16" (stochastic rounding, state_seed = the run's
seed) and with state_dtype="q8" (8-bit block-wise dynamic quantisation), for
each seed:

* the demo's Fashion-MNIST MLP (784-256-10): test accuracy and final training loss;
* a small transformer (2 encoder layers, d_model 64, 4 heads) that learns to
  sort 16 tokens of a 16-symbol vocabulary (per-position classification):
  held-out token accuracy and loss.

The contenders take turns batch by batch. Prints one table row per model x
seed x contender (docs/engine.md quotes them).

    python -m mur_lab.state_dtype [--seeds 0,1] [--epochs 1] [--train-size 60000] [--steps 800]
                                  [--dtypes float32,bfloat16,q8]
"""

import argparse
import copy

import torch
from torch import nn

import mur
from mur_lab.data import load

VOCAB, LENGTH = 16, 16


class Sorter(nn.Module):
    """A 2-layer transformer encoder: tokens in, the sorted sequence's token per position out."""

    def __init__(self, d=64):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(LENGTH, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, dim_feedforward=128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.out = nn.Linear(d, VOCAB)

    def forward(self, x):
        return self.out(self.encoder(self.embed(x) + self.pos))


def sort_batch(g, n):
    x = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    return x, x.sort(dim=1).values


DTYPES = ["float32", "bfloat16", "q8"]


def contenders(net, server, lr, seed):
    nets = [copy.deepcopy(net) for _ in range(1 + len(DTYPES))]
    opts = [torch.optim.Adam(nets[0].parameters(), lr=lr)]
    for k, dtype in enumerate(DTYPES, start=1):
        opts.append(
            mur.RemoteOptimizer(
                nets[k].parameters(),
                optimizer="adam",
                rule="additive",
                lr=lr,
                server=server,
                state_dtype=dtype,
                state_seed=seed,
            )
        )
    names = ["torch.optim.Adam"] + [f"mur adam, {d} state" for d in DTYPES]
    return list(zip(names, nets, opts))


def step(net, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def run_mlp(server, seed, a, rows):
    torch.manual_seed(seed)
    xtr, ytr = (torch.from_numpy(v)[: a.train_size] for v in load("train"))
    xte, yte = (torch.from_numpy(v) for v in load("t10k"))
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    cs = contenders(net, server, 1e-3, seed)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    last = [0.0] * len(cs)
    try:
        for _ in range(a.epochs):
            perm = torch.randperm(len(xtr), generator=order)
            for i in range(0, len(xtr), 128):
                idx = perm[i : i + 128]
                for k, (_, n, o) in enumerate(cs):
                    last[k] = step(n, o, loss_fn, xtr[idx], ytr[idx])
        with torch.no_grad():
            for k, (name, n, _) in enumerate(cs):
                acc = (n(xte).argmax(1) == yte).float().mean().item()
                rows.append(
                    ("Fashion-MNIST MLP", seed, name, f"test acc {acc * 100:.2f}%", f"last batch loss {last[k]:.4f}")
                )
    finally:
        for _, _, o in cs[1:]:
            o.close()


def run_sorter(server, seed, a, rows):
    torch.manual_seed(seed)
    cs = contenders(Sorter(), server, 1e-3, seed)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1000 + seed)
    test = sort_batch(torch.Generator().manual_seed(99), 2048)
    try:
        for _ in range(a.steps):
            x, y = sort_batch(g, 64)
            for _, n, o in cs:
                step(n, o, lambda out, t: loss_fn(out.reshape(-1, VOCAB), t.reshape(-1)), x, y)
        with torch.no_grad():
            for name, n, _ in cs:
                out = n(test[0])
                loss = loss_fn(out.reshape(-1, VOCAB), test[1].reshape(-1)).item()
                acc = (out.argmax(-1) == test[1]).float().mean().item()
                rows.append(
                    (
                        "transformer (sort 16 tokens)",
                        seed,
                        name,
                        f"held-out token acc {acc * 100:.2f}%",
                        f"loss {loss:.4f}",
                    )
                )
    finally:
        for _, _, o in cs[1:]:
            o.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=1, help="MLP epochs")
    ap.add_argument("--train-size", type=int, default=60000, help="MLP: the first N training images")
    ap.add_argument("--steps", type=int, default=800, help="transformer steps (batch 64)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="mur's state dtypes, beside torch.optim.Adam")
    a = ap.parse_args(argv)
    DTYPES[:] = a.dtypes.split(",")
    torch.set_num_threads(1)  # the second core is the server's
    rows = []
    with mur.LocalServer() as server:
        print(f"server backend {server.backend}")
        for seed in (int(s) for s in a.seeds.split(",")):
            run_mlp(server.address, seed, a, rows)
            run_sorter(server.address, seed, a, rows)
    print("| model | seed | optimizer | result | loss |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    return rows


if __name__ == "__main__":
    main()
