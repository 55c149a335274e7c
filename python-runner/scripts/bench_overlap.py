#!/usr/bin/env python3
"""overlap=True against overlap=False and torch's fused Adam: ms per
iteration with gradients made by backward after the optimizer's own
zero_grad() (torch's default set_to_none=True: each p.grad is a fresh tensor).

    PYTHONPATH=python-runner .venv-torch2/bin/python python-runner/scripts/bench_overlap.py \
        [--params 4000000] [--tensors 1,300] [--blocks 7] [--steps 20] [--threads 0]

Each model is `--params` float32 elements in `--tensors` parameters, and the
loss sum_i (w_i * x_i).sum(), so backward is one multiply per element and
makes every gradient (a fresh tensor) as a real backward does. Sides (mur
overlap on, mur overlap off, torch.optim.Adam(fused=True)) alternate in
blocks of `--steps` iterations, after warm-up, sharing one local server; each
block gives its median, and a cell reports the median of its blocks of
backward (zero_grad + backward), step, and their sum. mur: Adam, additive
rule, shared memory. Prints a markdown table; nothing is asserted.
"""

import argparse
import statistics
import time

import torch

import mur


def model(params, tensors, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [params // tensors + (1 if i < params % tensors else 0) for i in range(tensors)]
    ws = [torch.nn.Parameter(torch.randn(n, generator=g) * 0.1) for n in sizes]
    xs = [torch.randn(n, generator=g) for n in sizes]
    return ws, xs


def iteration(opt, ws, xs):
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = sum((w * x).sum() for w, x in zip(ws, xs))
    loss.backward()
    t1 = time.perf_counter()
    opt.step()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=4_000_000)
    ap.add_argument("--tensors", default="1,300")
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="server threads and torch threads (0: every core)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {a.params} params")
    print("| tensors | side | backward ms | step ms | backward + step ms |")
    print("| --- | --- | --- | --- | --- |")
    with mur.LocalServer(backend="native", extra_args=["--threads", str(a.threads)] if a.threads else []) as server:
        for tensors in map(int, a.tensors.split(",")):
            sides = {}
            for name in ("mur overlap", "mur no overlap", "torch fused"):
                ws, xs = model(a.params, tensors)
                if name == "torch fused":
                    opt = torch.optim.Adam(ws, lr=1e-3, fused=True)
                else:
                    opt = mur.RemoteOptimizer(
                        ws, optimizer="adam", rule="additive", lr=1e-3, server=server.address,
                        transport="shm", overlap=name == "mur overlap",
                    )  # fmt: skip
                for _ in range(3):  # warm-up: first steps create slots, the lane arms
                    iteration(opt, ws, xs)
                sides[name] = (opt, ws, xs, [])
            try:
                for _ in range(a.blocks):
                    for opt, ws, xs, blocks in sides.values():
                        runs = [iteration(opt, ws, xs) for _ in range(a.steps)]
                        blocks.append(
                            [statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                             statistics.median(r[0] + r[1] for r in runs)]
                        )  # fmt: skip
                for name, (_, _, _, blocks) in sides.items():
                    b, s, t = (statistics.median(x[k] for x in blocks) * 1e3 for k in range(3))
                    print(f"| {tensors} | {name} | {b:.2f} | {s:.2f} | {t:.2f} |", flush=True)
            finally:
                for opt, *_ in sides.values():
                    if isinstance(opt, mur.RemoteOptimizer):
                        opt.close()


if __name__ == "__main__":
    main()
