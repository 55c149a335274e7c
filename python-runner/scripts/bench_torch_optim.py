#!/usr/bin/env python3
"""torch.optim step throughput on one float32 parameter of n elements, for make bench-engine.

For every optimizer x size x thread count it measures each form of the step this
torch supports on CPU: "default" (no flags), "foreach" (foreach=True) and "fused"
(fused=True; support is detected by trying one step, not by version number).

    python bench_torch_optim.py --sizes 1000000,4000000 \
        --optimizers sgd,adam,adamw,adagrad,rmsprop --threads 1,2 [--seconds 1.0]

Prints ONE JSON object on stdout (progress goes to stderr):
    {"torch_version": "2.x", "max_threads": 2, "rows": [{"optimizer": "adam",
     "params": 4000000, "threads": 1, "mode": "fused", "mparams_per_s": 1234.5,
     "ms_per_step": 3.24}, ...]}
Each row uses the median per-step time (after 3 warm-up steps, at least 5 steps
and --seconds of stepping), which resists noise on a shared machine.

    python bench_torch_optim.py --serve

keeps one optimizer alive and answers one JSON line per request line on stdin,
so that a caller can alternate torch's steps with its own in rounds:
    {"cmd": "modes", "optimizer": "adam"}            -> {"modes": ["default", ...]}
    {"cmd": "setup", "optimizer": "adam", "mode": "fused", "params": n, "threads": k}
                                                     -> {"ok": true} (3 warm-up steps done)
    {"cmd": "time", "steps": s}                      -> {"seconds": [per-step times]}
    {"cmd": "free"}                                  -> {"ok": true}
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

OPTIMIZERS = {
    "sgd": lambda params, **kw: torch.optim.SGD(params, lr=0.01, momentum=0.9, **kw),
    "adam": lambda params, **kw: torch.optim.Adam(params, lr=1e-3, **kw),
    "adamw": lambda params, **kw: torch.optim.AdamW(params, lr=1e-3, **kw),
    "adagrad": lambda params, **kw: torch.optim.Adagrad(params, lr=1e-2, **kw),
    "rmsprop": lambda params, **kw: torch.optim.RMSprop(params, lr=1e-2, **kw),
    "muon": lambda params, **kw: torch.optim.Muon(params, lr=0.02, **kw),  # torch >= 2.9
}
if hasattr(torch.optim, "Adafactor"):  # torch >= 2.5
    OPTIMIZERS["adafactor"] = lambda params, **kw: torch.optim.Adafactor(params, **kw)
MATRIX = {"muon"}  # 2-D only: a 2048-row matrix of about n elements, as ts-server/bench/engine.ts
MODES = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def shape_of(name, n):
    """Adafactor factors a matrix: R x C with R the largest divisor <= sqrt(n), as the server's bench;
    Muon's is a 2048-row matrix of about n elements."""
    if name in MATRIX:
        return (2048, max(1, n // 2048))
    if name != "adafactor":
        return (n,)
    r = int(n**0.5)
    while n % r:
        r -= 1
    return (r, n // r)


def make(name, mode, n):
    """A fresh parameter (seed 0) with a gradient, and its optimizer in `mode`."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape_of(name, n)))
    p.grad = 0.01 * torch.randn(p.shape)
    return OPTIMIZERS[name]([p], **MODES[mode])


def supported(name, mode):
    """Whether this torch accepts `mode` for `name` on CPU: try one step."""
    try:
        make(name, mode, 16).step()
        return True
    # KeyError: this torch lacks it (Adafactor < 2.5); AttributeError: no such class (Muon < 2.9)
    except (TypeError, RuntimeError, ValueError, KeyError, AttributeError) as e:
        print(f"  {name} {mode}: unsupported ({type(e).__name__}: {str(e).splitlines()[0][:100]})", file=sys.stderr)
        return False


def measure(name, mode, n, seconds):
    """Median seconds per step."""
    opt = make(name, mode, n)
    for _ in range(3):
        opt.step()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def serve():
    """The --serve loop: one request per stdin line, one JSON answer per stdout line."""
    opt = None
    print(json.dumps({"torch_version": torch.__version__, "max_threads": len(os.sched_getaffinity(0))}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "modes":
            out = {"modes": [m for m in MODES if supported(req["optimizer"], m)]}
        elif cmd == "setup":
            opt = None  # the previous optimizer's memory goes before the next is made
            torch.set_num_threads(req["threads"])
            opt = make(req["optimizer"], req["mode"], req["params"])
            for _ in range(3):
                opt.step()
            out = {"ok": True}
        elif cmd == "time":
            times = []
            for _ in range(req["steps"]):
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
            out = {"seconds": times}
        elif cmd == "free":
            opt = None
            out = {"ok": True}
        else:
            out = {"error": f"unknown cmd {cmd!r}"}
        print(json.dumps(out), flush=True)


def main():
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,4000000")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--threads", default="1")
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.optimizers.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    unknown = [name for name in names if name not in OPTIMIZERS]
    if unknown:
        ap.error(f"unknown optimizer(s) {unknown}; known: {list(OPTIMIZERS)}")

    # The CPUs this process may use (torch's default thread count can be lower).
    max_threads = len(os.sched_getaffinity(0))
    print(f"torch {torch.__version__}, {max_threads} threads available", file=sys.stderr)
    rows = []
    for name in names:
        modes = [mode for mode in MODES if supported(name, mode)]
        for n in sizes:
            for k in threads:
                torch.set_num_threads(k)
                for mode in modes:
                    sec = measure(name, mode, n, args.seconds)
                    row = {
                        "optimizer": name,
                        "params": n,
                        "threads": k,
                        "mode": mode,
                        "mparams_per_s": round(n / sec / 1e6, 1),
                        "ms_per_step": round(sec * 1e3, 3),
                    }
                    print(f"  {name} n={n} threads={k} {mode}: {row['mparams_per_s']} Mparam/s", file=sys.stderr)
                    rows.append(row)
    print(json.dumps({"torch_version": torch.__version__, "max_threads": max_threads, "rows": rows}))


if __name__ == "__main__":
    main()
