"""python -m mur_lab.bench_train: ms per training batch with torch's fused AdamW,
with mur's RemoteOptimizer and with mur overlapping its step with backward, and
the remote step beside torch's fused step and the memory limit. Also the
helpers mur_lab.bench_e2e shares: a fair timer for contenders on a noisy
machine, a Fashion-MNIST training loop and a backward that writes fresh
gradients.

1. Training rows. Fashion-MNIST (mur_lab.data), batches of 128, the MLP, the
   CNN, the patch transformer and the wide MLP (5.8M parameters: the one whose
   optimizer step is a real share of the batch) of mur_lab.models: ms per batch (zero_grad,
   forward, backward, step) with
     fused     torch.optim.AdamW(lr=1e-3, fused=True) (torch's default step where
               this torch has no fused CPU kernel: torch 1.13),
     mur       mur.RemoteOptimizer(optimizer="adamw", rule="additive",
               server="auto", the same hyperparameters): shared memory,
     overlap   the same with overlap=True (each parameter's gradient moved,
               checked and its update computed into staging on the server when
               backward has finished it; step() commits: lane.cc); "n/a" when
               this mur has no overlap= keyword,
     check     (the row's trailing note) overlap="check":
               gradients moved and checked while hot, nothing speculated.
   Each contender trains its own copy of the model from the same initial
   weights on the same batches. They take turns in blocks of batches (the
   order reversed every other round) after a warm-up; a contender's time is
   the median over its blocks of ms per batch, and the spread is the lowest and
   highest block. Ratios are over fused; "overlap buys" is mur's ms minus
   overlap's, in ms and as a fraction of mur's.
2. Step rows. One float32 tensor of 4M, 64M and 256M parameters (256M only when
   the machine has ~18 GiB available), AdamW, 2 torch and server threads: torch's
   fused step, the remote step on shm with its gradient made by backward after
   the optimizer's own zero_grad() (p.grad a fresh tensor on torch 2.x), the
   remote step with overlap=True once the lane has staged the update ("staged":
   what step() costs when backward gave the server time to speculate, i.e. the
   commit: the staged parameter copied into the arena, the state flipped) and the
   limit kernel (ts-server/bench/limit.ts: Adam's 28 bytes per parameter, no
   maths, on the engine's pool and huge pages), alternating; GB/s at 28 bytes per
   parameter and each side's fraction of the limit.

    make bench-train
    PYTHONPATH=python-runner:python-runner/lab .venv-torch2/bin/python -m mur_lab.bench_train [--quick]

--quick is a ~1 minute smoke run (tiny sizes); --out FILE also writes the JSON
lines (one per row).
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

import mur
from mur_lab import data, models


def _nothing():
    pass


def interleaved(fns, seconds, min_calls, max_calls, warmup=3, burst=5, prepare=None):
    """The median milliseconds per call of each function of ``fns`` (name ->
    fn), and the number of timed calls of each.

    Every function first runs ``warmup`` times untimed. Then they take turns,
    ``burst`` timed calls each, so that whatever else the machine does hits
    them alike; this goes on until each has run ``min_calls`` times and
    ``seconds`` have passed, or each has run ``max_calls`` times.
    ``prepare`` (name -> fn), if given, runs untimed before every call.
    """
    prepare = prepare or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            prepare.get(name, _nothing)()
            fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            before = prepare.get(name, _nothing)
            for _ in range(burst):
                before()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        calls = len(next(iter(times.values())))
        if calls >= max_calls or (calls >= min_calls and time.perf_counter() - start >= seconds):
            return {name: statistics.median(t) * 1e3 for name, t in times.items()}, calls


def fashion_batches(count, size=64):
    """The first ``count`` training batches of Fashion-MNIST as tensors."""
    x, y = data.load("train")
    n = min(count * size, len(x))
    return [(torch.from_numpy(x[i : i + size]), torch.from_numpy(y[i : i + size])) for i in range(0, n, size)]


MODELS = {"mlp": models.mlp, "cnn": models.cnn, "transformer": models.transformer, "wide_mlp": models.wide_mlp}


def model(name, seed=0):
    torch.manual_seed(seed)
    return MODELS[name]()


def trainer(net, opt, batches):
    """A function that trains ``net`` on the next batch: zero_grad, forward, backward, step."""
    it = itertools.cycle(batches)
    loss_fn = nn.CrossEntropyLoss()

    def one_batch():
        x, y = next(it)
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    return one_batch


class _Backward(torch.autograd.Function):
    """A loss whose backward writes each parameter's gradient once, fresh (as a
    model's last operation does): d loss / d params[i] = grads[i]. Autograd then
    accumulates it as after any backward: into p.grad when the optimizer's
    zero_grad() kept it, else p.grad becomes this new tensor."""

    @staticmethod
    def forward(ctx, grads, *params):
        ctx.grads = grads
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, _):
        return (None, *(g.clone() for g in ctx.grads))


def backward_after_zero_grad(opt, grads):
    """The user's loop without the model: the optimizer's own zero_grad(), then a backward."""
    opt.zero_grad()
    _Backward.apply(grads, *opt.param_groups[0]["params"]).backward()


def blocks(fns, rounds, block, warmup, prepare=None, timers=None):
    """Per function of ``fns`` (name -> fn): the median over ``rounds`` blocks of
    milliseconds per call, and the lowest and highest block, as {name: (median,
    low, high)}.

    Every function first runs ``warmup`` times untimed. Then each round runs every
    function ``block`` times in a row, timed as one block, in an order reversed
    every other round, so that whatever else the machine does hits them alike.
    ``prepare`` (name -> fn) runs untimed before every call; ``timers`` (name ->
    fn returning seconds) replaces the wall clock of a function that measures
    itself (another process's kernel).
    """
    prepare, timers = prepare or {}, timers or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            prepare.get(name, _nothing)()
            fn()
    per_block = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, before, total = fns[name], prepare.get(name), 0.0
            for _ in range(block):
                if before:
                    before()
                t0 = time.perf_counter()
                out = fn()
                total += timers[name](out) if name in timers else time.perf_counter() - t0
            per_block[name].append(total / block * 1e3)
    return {name: (statistics.median(t), min(t), max(t)) for name, t in per_block.items()}


class LimitKernel:
    """The limit kernel (ts-server/bench/limit.ts) on ``n`` parameters and ``threads``
    engine threads in a node process of its own: ``run()`` runs it once and answers
    its seconds, measured in that process. A context manager: leaving stops it."""

    def __init__(self, n, threads):
        from mur.server import find_server_cli

        script = Path(find_server_cli()).resolve().parents[1] / "bench" / "limit.js"
        if not script.is_file():
            raise FileNotFoundError(f"{script} is not built (make build)")
        self.proc = subprocess.Popen(
            ["node", str(script), str(n), str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("the limit kernel's process did not start")
        self.threads = json.loads(line)["threads"]

    def run(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


HYPERS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}  # torch's AdamW defaults
BYTES_PER_PARAM = 28  # Adam(W): read p, g, m, v; write p, m, v
FULL = dict(
    models=["mlp", "cnn", "transformer", "wide_mlp"],
    batches=100,
    rounds=7,
    block=10,
    warmup=10,
    step_sizes=[4_000_000, 64_000_000, 256_000_000],
    step_rounds=5,
    step_block=3,
)
QUICK = dict(
    models=["mlp", "cnn", "transformer"],
    batches=8,
    rounds=2,
    block=2,
    warmup=2,
    step_sizes=[100_000],
    step_rounds=2,
    step_block=2,
)


def omp_wait_policy():
    """How this process's OpenMP threads wait between parallel regions (read by
    libgomp when torch loads): unset, torch's threads spin for a while after
    each op (forward, backward, a fused step) on the cores a same-host server
    steps on (README, "Sharing the host's cores")."""
    return "OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "unset")


def fused_adamw(params):
    """torch.optim.AdamW with fused=True, or its default step where this torch has no
    fused CPU kernel; and the mode it runs."""
    params = list(params)
    try:
        probe = nn.Parameter(torch.zeros(1))
        probe.grad = torch.zeros(1)
        torch.optim.AdamW([probe], fused=True).step()
    except Exception:
        return torch.optim.AdamW(params, **HYPERS), "default"
    return torch.optim.AdamW(params, **HYPERS, fused=True), "fused"


def remote_adamw(params, threads, **kw):
    """RemoteOptimizer(adamw, additive, server="auto") with ``threads`` server threads."""
    saved = os.environ.get("MUR_THREADS")
    os.environ["MUR_THREADS"] = str(threads)  # read by the server "auto" starts
    try:
        return mur.RemoteOptimizer(params, optimizer="adamw", rule="additive", server="auto", **HYPERS, **kw)
    finally:
        os.environ.pop("MUR_THREADS") if saved is None else os.environ.update(MUR_THREADS=saved)


def overlap_adamw(params, threads):
    """remote_adamw with overlap=True, or the reason this mur cannot (a mur before
    overlap= refuses the keyword: a TypeError, or a ValueError naming it as an
    unknown hyperparameter)."""
    try:
        return remote_adamw(params, threads, overlap=True), None
    except (TypeError, ValueError) as e:
        if "overlap" not in str(e):
            raise
        return None, "this mur has no overlap"


def train_rows(name, batches, threads, cfg):
    """One model's three contenders side by side: ms per batch and ratios."""
    nets, opts = {}, {}
    nets["fused"] = model(name)  # the same initial weights for every contender
    opts["fused"], mode = fused_adamw(nets["fused"].parameters())
    nets["mur"] = model(name)
    opts["mur"] = remote_adamw(nets["mur"].parameters(), threads)
    nets["overlap"] = model(name)
    opts["overlap"], why = overlap_adamw(nets["overlap"].parameters(), threads)
    if opts["overlap"] is None:
        del opts["overlap"]
    elif opts["overlap"].overlap:
        # overlap="check": gradients moved and checked while hot only (no staging)
        nets["check"] = model(name)
        opts["check"] = remote_adamw(nets["check"].parameters(), threads, overlap="check")
    try:
        fns = {k: trainer(nets[k], o, batches) for k, o in opts.items()}
        ms = blocks(fns, cfg["rounds"], cfg["block"], cfg["warmup"])
    finally:
        for o in opts.values():
            if isinstance(o, mur.RemoteOptimizer):
                o.close()
    fused, remote = ms["fused"][0], ms["mur"][0]
    overlap = ms["overlap"][0] if "overlap" in ms else None
    row = {
        "model": name,
        "params": sum(p.numel() for p in nets["fused"].parameters()),
        "tensors": len(list(nets["fused"].parameters())),
        "batch": len(batches[0][1]),
        "threads": threads,
        "torch_mode": mode,
        "blocks": cfg["rounds"],
        "block": cfg["block"],
        **{f"{k}_ms": round(v[0], 3) for k, v in ms.items()},
        **{f"{k}_spread_ms": [round(v[1], 3), round(v[2], 3)] for k, v in ms.items()},
        "mur_over_fused": round(remote / fused, 3),
        "overlap_ms": round(overlap, 3) if overlap is not None else None,
        "overlap_over_fused": round(overlap / fused, 3) if overlap is not None else None,
        "overlap_buys_ms": round(remote - overlap, 3) if overlap is not None else None,
        "overlap_buys": round(1 - overlap / remote, 3) if overlap is not None else None,
    }
    if why:
        row["overlap_skipped"] = why
    return row


def check_cell(r):
    """The trailing note of a training row: overlap without staging (check only), when it ran."""
    if r.get("check_ms") is None:
        return ""
    lo, hi = r["check_spread_ms"]
    return f"  overlap without staging: {r['check_ms']:.3f} [{lo:.2f}-{hi:.2f}]"


def memory_available():
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def staged_backward(opt, grads):
    """backward_after_zero_grad with overlap on, then until the server's lane has
    checked the gradient and staged its update (untimed: backward's share)."""
    backward_after_zero_grad(opt, grads)
    lane = opt._plane.arena.lane if opt._plane is not None and opt._plane.name == "shm" else None
    if lane is not None:
        lane.drain()


def step_row(n, threads, cfg):
    """torch's fused AdamW step, the remote one (gradient made by backward after
    zero_grad()) and the limit kernel on ``n`` parameters, alternating."""
    torch.manual_seed(0)
    init = torch.randn(n)
    grads = [torch.randn(n) * 1e-3]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    opts = {}
    try:
        opts["fused"], mode = fused_adamw([nn.Parameter(init.clone())])
        opts["mur"] = remote_adamw([nn.Parameter(init.clone())], threads)
        staged, _ = overlap_adamw([nn.Parameter(init.clone())], threads)
        if staged is not None and staged.overlap:
            opts["staged"] = staged
        del init
        with LimitKernel(n, threads) as limit:
            fns = {k: o.step for k, o in opts.items()}
            fns["limit"] = limit.run
            prepare = {k: (lambda o=o: backward_after_zero_grad(o, grads)) for k, o in opts.items()}
            if "staged" in opts:
                prepare["staged"] = lambda o=opts["staged"]: staged_backward(o, grads)
            ms = blocks(
                fns, cfg["step_rounds"], cfg["step_block"], 2, prepare=prepare, timers={"limit": lambda sec: sec}
            )
            made_committed = opts["staged"].speculations if "staged" in opts else None
    finally:
        for k in ("mur", "staged"):
            if k in opts:
                opts[k].close()
        torch.set_num_threads(torch_threads)
    gbs = {k: BYTES_PER_PARAM * n / (v[0] * 1e-3) / 1e9 for k, v in ms.items()}
    return {
        "params": n,
        "threads": threads,
        "torch_mode": mode,
        "limit_threads": limit.threads,
        **{f"{k}_ms": round(v[0], 3) for k, v in ms.items()},
        **{f"{k}_gb_per_s": round(v, 1) for k, v in gbs.items()},
        "mur_over_fused": round(ms["mur"][0] / ms["fused"][0], 3),
        "mur_of_limit": round(gbs["mur"] / gbs["limit"], 3),
        "fused_of_limit": round(gbs["fused"] / gbs["limit"], 3),
        "staged_over_mur": round(ms["staged"][0] / ms["mur"][0], 3) if "staged" in ms else None,
        "speculations_made_committed": made_committed,
    }


def fmt(x, spec):
    """x formatted by spec ("9.3f"), or a dash of the same width when there is no value."""
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def print_header():
    """The start of a bench run: torch, the mur it measures, the cores and the load (beside emit_rows' end)."""
    print(
        f"torch {torch.__version__}; mur {mur.__file__}; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}; {omp_wait_policy()}",
        flush=True,
    )


def time_calls(obj, name):
    """Wraps ``obj.name`` so that each call's seconds land in the returned list."""
    spent, call = [], getattr(obj, name)

    def timed(*args, **kw):
        t0 = time.perf_counter()
        try:
            return call(*args, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    setattr(obj, name, timed)
    return spent


def emit_rows(rows, out):
    """The end of a bench run: the load average, then every row as a JSON line, printed and (``out``) written."""
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}\n")
    lines = [json.dumps(r) for r in rows]
    print("\n".join(lines))
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (tiny sizes, few blocks)")
    ap.add_argument("--out", help="also write the JSON lines to this file")
    ap.add_argument("--models", help="comma-separated of " + ", ".join(MODELS))
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and server threads of the training rows (default 1: on 2 cores, one each)",
    )
    ap.add_argument("--step-sizes", help="step rows' parameters, comma-separated (none: skip them)")
    ap.add_argument("--step-threads", type=int, default=2, help="torch and server threads of the step rows")
    a = ap.parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    if a.models:
        cfg["models"] = a.models.split(",")
        if set(cfg["models"]) - set(MODELS):
            ap.error(f"--models={a.models}: each must be one of {', '.join(MODELS)}")
    if a.step_sizes is not None:
        cfg["step_sizes"] = [int(float(s)) for s in a.step_sizes.split(",") if s]
    if a.threads < 1 or a.step_threads < 1:
        ap.error("--threads and --step-threads must be at least 1")

    print_header()
    rows = []
    if cfg["models"]:
        torch.set_num_threads(a.threads)
        batches = fashion_batches(cfg["batches"], size=128)
        print(
            f"\nFashion-MNIST, batch {len(batches[0][1])}, AdamW lr 1e-3 wd 1e-2: ms per batch (zero_grad, forward, "
            f"backward, step), median of {cfg['rounds']} blocks of {cfg['block']} batches each [lowest-highest block]; "
            f"{a.threads} torch and server thread(s)"
        )
        print(
            f"{'model':11} {'params':>7} {'fused ms':>22} {'mur ms':>22} {'mur/fused':>9} "
            f"{'overlap ms':>22} {'ovl/fused':>9} {'overlap buys':>16}",
            flush=True,
        )
        for name in cfg["models"]:
            r = train_rows(name, batches, a.threads, cfg)
            rows.append(r)

            def cell(k, r=r):
                if r.get(f"{k}_ms") is None:
                    return format("n/a", ">22")
                lo, hi = r[f"{k}_spread_ms"]
                return format(f"{r[f'{k}_ms']:.3f} [{lo:.2f}-{hi:.2f}]", ">22")

            buys = (
                f"{r['overlap_buys_ms']:.3f} ({100 * r['overlap_buys']:.0f}%)" if r["overlap_buys"] is not None else "-"
            )
            print(
                f"{r['model']:11} {r['params']:>7} {cell('fused')} {cell('mur')} {r['mur_over_fused']:9.3f} "
                f"{cell('overlap')} {fmt(r['overlap_over_fused'], '9.3f')} {buys:>16}"
                + (f"  overlap: n/a ({r['overlap_skipped']})" if "overlap_skipped" in r else "")
                + check_cell(r)
                + ("  (torch: default step, no fused CPU kernel)" if r["torch_mode"] != "fused" else ""),
                flush=True,
            )

    if cfg["step_sizes"]:
        print(
            f"\nOne AdamW step on one float32 tensor, {a.step_threads} torch and server threads, gradient made by "
            f"backward after zero_grad(): ms (median of {cfg['step_rounds']} blocks of {cfg['step_block']}), "
            f"GB/s at {BYTES_PER_PARAM} B/param, fraction of the limit kernel"
        )
        print(
            f"{'params':>10} {'fused ms':>9} {'mur ms':>9} {'staged ms':>9} {'limit ms':>9} {'mur/fused':>9} "
            f"{'fused GB/s':>10} {'mur GB/s':>9} {'limit GB/s':>10} {'fused/lim':>9} {'mur/lim':>8}",
            flush=True,
        )
        for n in cfg["step_sizes"]:
            avail = memory_available()
            # ~18 float32 copies at once: torch's p, m, v, p.grad; mur's arena (p, g), p.grad and the
            # server's m, v; the limit's four; the gradient source, the initial values, the session's upload.
            need = 22 * 4 * n  # and the overlap optimizer's arena, state and staging: +~4
            if avail is not None and need > avail:
                print(f"{n:>10}  skipped: needs ~{need / 2**30:.0f} GiB, {avail / 2**30:.0f} GiB available", flush=True)
                rows.append({"params": n, "skipped": f"needs ~{need} bytes, {avail} available"})
                continue
            r = step_row(n, a.step_threads, cfg)
            rows.append(r)
            print(
                f"{r['params']:>10} {r['fused_ms']:9.3f} {r['mur_ms']:9.3f} {fmt(r.get('staged_ms'), '9.3f')} "
                f"{r['limit_ms']:9.3f} "
                f"{r['mur_over_fused']:9.3f} {r['fused_gb_per_s']:10.1f} {r['mur_gb_per_s']:9.1f} "
                f"{r['limit_gb_per_s']:10.1f} {r['fused_of_limit']:9.3f} {r['mur_of_limit']:8.3f}"
                + ("  (torch: default step, no fused CPU kernel)" if r["torch_mode"] != "fused" else ""),
                flush=True,
            )

    emit_rows(rows, a.out)


if __name__ == "__main__":
    main()
