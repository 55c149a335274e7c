#!/usr/bin/env python3
"""ms per L-BFGS closure round (one evaluation of the closure and its round
trip) on each transport: shm, tcp and grpc, against one loopback TCP server.

    PYTHONPATH=python-runner .venv/bin/python python-runner/scripts/bench_lbfgs.py \
        [--params 1000000] [--history 10] [--max-iter 5] [--steps 3] [--blocks 3] [--threads 0]

The model is one float32 vector w of `--params` elements and the loss
sum_i a_i (w_i - c_i)^2 / 2 + (w_i - c_i)^4 / 4 (curvatures a_i from 1 to 100,
so L-BFGS takes its whole `--max-iter` iterations per step). Sides alternate
in blocks of `--steps` steps (each from the same start, after one warm-up
step), each block gives ms per round: the whole step(closure) time over its
closure evaluations, and of that the closure's own time (forward and
backward, the same on every transport) and the rest (the round trip and the
server's L-BFGS work). A cell is the median of its blocks. The rounds are
the same on every transport (checked: the same evaluations). Prints a
markdown table; nothing is asserted.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch

import mur
from mur.server import find_server_cli


def tcp_server(threads):
    """A server on loopback TCP (native engine when built): it offers shm to this same-host client too."""
    proc = subprocess.Popen(
        ["node", str(find_server_cli()), "--port", "0", "--threads", str(threads), "--exit-with-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MUR_LOG": "silent"},
    )
    info = json.loads(proc.stdout.readline() or "{}")
    if "port" not in info:
        proc.kill()
        raise RuntimeError("the loopback TCP server did not start")
    return proc, f"127.0.0.1:{info['port']}", info.get("backend")


def problem(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.linspace(1.0, 100.0, n)
    c = torch.randn(n, generator=g)
    return a, c


def block(opt, w, w0, a, c, steps):
    """`steps` steps from w0: (ms per round, ms per round in the closure, rounds)."""
    inside = [0.0]
    rounds = [0]

    def closure():
        t = time.perf_counter()
        opt.zero_grad()
        d = w - c
        loss = (0.5 * a * d * d + 0.25 * d**4).sum()
        loss.backward()
        inside[0] += time.perf_counter() - t
        rounds[0] += 1
        return loss

    total = 0.0
    for _ in range(steps):
        with torch.no_grad():
            w.copy_(w0)  # on shm: written into the arena, the step starts from it
        t = time.perf_counter()
        opt.step(closure)
        total += time.perf_counter() - t
    return 1e3 * total / rounds[0], 1e3 * inside[0] / rounds[0], rounds[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    a, c = problem(args.params)
    w0 = torch.zeros(args.params)
    proc, address, backend = tcp_server(args.threads)
    sides = {}
    try:
        for name in ("shm", "tcp", "grpc"):
            w = torch.nn.Parameter(w0.clone())
            # tolerance_change 0: every step runs its max_iter iterations (rounds do not depend on timing)
            opt = mur.RemoteOptimizer(
                [w],
                optimizer="lbfgs",
                rule="additive",
                server=address,
                transport=name,
                history_size=args.history,
                max_iter=args.max_iter,
                tolerance_change=0.0,
            )
            block(opt, w, w0, a, c, 1)  # warm-up
            sides[name] = (opt, w, [])
        for _ in range(args.blocks):
            for opt, w, cells in sides.values():
                cells.append(block(opt, w, w0, a, c, args.steps))
    finally:
        for opt, _, _ in sides.values():
            opt.close()
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            f.close()
    rounds = {name: {r for _, _, r in cells} for name, (_, _, cells) in sides.items()}
    print(
        f"L-BFGS, {args.params:,} float32 parameters, history_size {args.history}, max_iter {args.max_iter}, "
        f"{args.steps} steps x {args.blocks} blocks, server engine {backend}, torch {torch.__version__}\n"
    )
    print("| transport | rounds per block | ms per round | closure ms | rest ms (round trip + server) |")
    print("|---|---|---|---|---|")
    for name, (_, _, cells) in sides.items():
        per, inside = statistics.median(x for x, _, _ in cells), statistics.median(y for _, y, _ in cells)
        print(
            f"| {name} | {', '.join(map(str, sorted(rounds[name])))} | {per:.1f} | {inside:.1f} | {per - inside:.1f} |"
        )


if __name__ == "__main__":
    main()
