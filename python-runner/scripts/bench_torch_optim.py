#!/usr/bin/env python3
"""torch.optim step throughput (Mparam/s) on one float32 parameter, for make bench-engine.

    python3 bench_torch_optim.py 1000000,4000000 sgd,adam,adagrad,rmsprop

Prints one JSON object: {"sgd": {"1000000": mparams_per_s, ...}, ...}.
"""
import json
import sys
import time

import torch

MAKE = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2),
}


def throughput(name, n, min_seconds=1.0):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n) * 0.01
    opt = MAKE[name]([p])
    for _ in range(3):
        opt.step()
    steps, start = 0, time.perf_counter()
    while True:
        opt.step()
        steps += 1
        elapsed = time.perf_counter() - start
        if steps >= 5 and elapsed >= min_seconds:
            return n * steps / elapsed / 1e6


def main():
    sizes = [int(s) for s in sys.argv[1].split(",")]
    names = sys.argv[2].split(",")
    out = {name: {str(n): throughput(name, n) for n in sizes} for name in names}
    out["torch_version"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
