#!/usr/bin/env python3
"""torch.optim.SparseAdam step time on one [rows, dim] float32 table whose
gradient touches `touched` rows (a coalesced torch.sparse_coo gradient, as
nn.Embedding(sparse=True) makes), for make bench-engine's SparseAdam row.

    python bench_torch_sparse.py --rows 1000000 --dim 64 --touched 10000 --threads 1 [--steps 20]

Prints ONE JSON object: {"torch_version", "threads", "ms_per_step" (median of
the steps, after one step over every row and 3 warm-up steps), "steps"}. Only opt.step() is timed; the
gradients (several fixed sets of sorted unique rows, cycled) are made before."""

import argparse
import json
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--touched", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(a.rows, a.dim, generator=gen))
    opt = torch.optim.SparseAdam([p], lr=1e-3)
    grads = []
    for _ in range(4):
        idx = torch.randperm(a.rows, generator=gen)[: a.touched].sort().values
        vals = torch.randn(a.touched, a.dim, generator=gen) * 0.01
        grads.append(torch.sparse_coo_tensor(idx.unsqueeze(0), vals, (a.rows, a.dim)).coalesce())
    # One step over every row first, so the state's pages exist (mur's side does the same).
    p.grad = torch.sparse_coo_tensor(torch.arange(a.rows).unsqueeze(0), torch.full((a.rows, a.dim), 0.01), p.shape)
    opt.step()
    times = []
    for k in range(a.steps + 3):
        p.grad = grads[k % len(grads)]
        t0 = time.perf_counter()
        opt.step()
        if k >= 3:
            times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": a.threads,
                "ms_per_step": round(1e3 * statistics.median(times), 3),
                "steps": a.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
