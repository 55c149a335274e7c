"""python -m mur_lab.bench_lane: what one same-host step costs when the step
itself is tiny, i.e. the fast lane's round trip (docs/data-path.md, "Wake-ups").

One float32 tensor of 1 and 100k parameters, AdamW (torch's defaults), 1 and 2
torch and server threads. Between steps the process is busy for 0, 100 or 500
µs (a stand-in for forward and backward: the lane has, or has not, gone to
sleep by the time the step comes). The gradient stays in place (on shm p.grad
views the arena), so only the step's own overhead is timed:
  fused   torch.optim.AdamW(fused=True).step() (torch's default step where this
          torch has no fused CPU kernel),
  step    mur.RemoteOptimizer(server="auto").step() on shared memory,
  lane    the part of that step spent in the lane's round trip: from the ring
          to the answer (planes/shm.py Lane.step, the plane's arena.lane),
  lanes   the fraction of mur's steps the lane answered (the rest went by RPC).
Each cell is the median of per-step times, the contenders alternating in
bursts (mur_lab.bench_train.interleaved).

    make bench-lane
    PYTHONPATH=python-runner:python-runner/lab .venv-torch2/bin/python -m mur_lab.bench_lane [--quick] [--out FILE]
"""

import argparse
import statistics
import time

import torch
from torch import nn

from mur_lab.bench_train import emit_rows, fused_adamw, interleaved, print_header, remote_adamw, time_calls

SIZES = [1, 100_000]
GAPS_US = [0, 100, 500]


def busy(us):
    """Keeps this thread busy for ``us`` microseconds (no sleep: a training loop computes)."""
    until = time.perf_counter() + us * 1e-6
    while time.perf_counter() < until:
        pass


def row(n, threads, gap_us, seconds, calls):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    init, grad = torch.randn(n), torch.randn(n) * 1e-2
    local_p, remote_p = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    local, mode = fused_adamw([local_p])
    remote = remote_adamw([remote_p], threads)
    try:
        plane = remote._plane
        lane = getattr(getattr(plane, "arena", None), "lane", None)
        if lane is None:
            raise RuntimeError(f"no fast lane here: the plane is {type(plane).__name__}")
        local_p.grad = grad.clone()
        remote_p.grad = grad.clone()
        remote.step()  # the first step places p.grad in the arena; later steps find it there
        spent = time_calls(lane, "step")  # every round trip's seconds
        before = plane.lane_steps
        fns = {"fused": local.step, "step": remote.step}
        gap = {name: (lambda: busy(gap_us)) for name in fns}
        ms, timed = interleaved(fns, seconds, calls, 10 * calls, warmup=20, prepare=gap)
        lane_steps = plane.lane_steps - before
        total = timed + 20  # the warm-up's steps ring the lane too
        return {
            "params": n,
            "threads": threads,
            "gap_us": gap_us,
            "torch_mode": mode,
            "fused_ms": ms["fused"],
            "step_ms": ms["step"],
            "lane_ms": statistics.median(spent) * 1e3 if spent else None,
            "lane_share": lane_steps / total,
            "step_over_fused": ms["step"] / ms["fused"],
            "calls": timed,
        }
    finally:
        remote.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per row")
    ap.add_argument("--out", help="also write the JSON lines (one per row) here")
    a = ap.parse_args(argv)
    seconds, calls = (0.5, 100) if a.quick else (4.0, 1000)
    print_header()
    print(
        "\nOne AdamW step, gradient in place, busy gap between steps: ms per step (median), lane round trip, "
        "share of steps the lane answered"
    )
    print(
        f"{'params':>7} {'threads':>7} {'gap µs':>6} {'fused ms':>9} {'step ms':>8} {'lane ms':>8} "
        f"{'step/fused':>10} {'lane':>5}",
        flush=True,
    )
    rows = []
    for n in SIZES:
        for threads in (1, 2):
            for gap_us in GAPS_US:
                r = row(n, threads, gap_us, seconds, calls)
                rows.append(r)
                lane = "-" if r["lane_ms"] is None else f"{r['lane_ms']:.3f}"
                print(
                    f"{n:>7} {threads:>7} {gap_us:>6} {r['fused_ms']:9.3f} {r['step_ms']:8.3f} {lane:>8} "
                    f"{r['step_over_fused']:10.2f} {r['lane_share']:5.2f}"
                    + ("  (torch: default step)" if r["torch_mode"] != "fused" else ""),
                    flush=True,
                )
    emit_rows(rows, a.out)


if __name__ == "__main__":
    main()
