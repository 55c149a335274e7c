"""python -m mur_lab.bench_scale: sharded mur servers under torch.distributed ranks.

For every S servers x R ranks x P parameters (default 1, 2, 4 x 1, 2, 4 x 4M,
16M float32 in 16 equal tensors), on this machine:

- S mur servers (``node ts-server/dist/src/cli.js --host 127.0.0.1 --port 0 --backend native``),
- R ranks spawned by torch.multiprocessing (gloo, a file store: loopback only),
  each with ``ZeroRedundancyOptimizer(params, optimizer_class=mur.RemoteOptimizer,
  server=[S addresses], optimizer="adam", rule="additive")``: each rank owns
  P/R parameters (ZeRO's partition), sharded over the S servers by bytes.
- Each step sets fixed random gradients (no forward, backward or DDP
  all-reduce: those cost the same whatever the optimizer) and times
  ``opt.step()``: the *remote step* (the rank's ShardedRemoteOptimizer step:
  validate on every shard, then apply on every shard) and the whole ZeRO step
  (the remote step plus broadcasting every rank's new parameters to the others).
  steps/s = 1 / the slowest rank's mean ZeRO step.

Then the same table *on paper* for separate hosts: every server and every
rank on its own host, links of ``--gbps`` (default 10 Gb/s, full duplex) and a
round trip of ``--rtt-us`` (default 100 us), the servers' engine as fast as
measured here for one server and one rank on shared memory (``E``, parameters
per second). Per step, with the tensors on the wire (gRPC or tcp: the same bytes):

    validate  = RTT + 4 P/R / M                    (the rank checks its gradients at memory speed M,
                                                    the servers the step number and hyperparameters;
                                                    none when S = 1)
    apply     = RTT + 4 P/R / B_in + P/S / E + 4 P/R / B_out
    broadcast = 4 P (R-1)/R / B                    (ZeRO: the other ranks' parameters)

where a transfer is limited by the busier end: a rank's link carries its
4 P/R bytes, a server's link the 4 P/S bytes of all ranks' shards, so
B_in = B_out = B / max(1, (P/S) / (P/R)) = B min(1, S/R), and M = 5 GB/s.

The machine this runs on has few cores: S servers and R ranks share them, so
the measured table shows overheads and contention, the paper table what
separate hosts would give. The servers listen on TCP loopback; the default
``--transport tcp`` moves tensors on their data planes (what "auto" picks for
a server on another host), ``--transport grpc`` in gRPC messages,
``--transport shm`` in shared memory.

    make bench-scale
    python -m mur_lab.bench_scale --params 1M --servers 1,2 --ranks 1,2 --steps 3   # a quick check
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mur
from mur.server import find_server_cli, terminate
from mur_lab.bench_train import time_calls

TENSORS = 16


def _size(text):
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    n = int(float(text[:-1] if text[-1:] in "KM" else text) * scale)
    if n < TENSORS:
        raise argparse.ArgumentTypeError(f"{text}: at least {TENSORS} parameters")
    return n


def _ints(text):
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of positive integers") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of positive integers")
    return out


def start_server():
    """A server on TCP loopback (native engine), port chosen by the kernel; (process, address)."""
    cmd = [
        "node",
        str(find_server_cli()),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--exit-with-stdin",
        "--backend",
        "native",
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MUR_LOG": "silent"},
    )
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise RuntimeError(f"the mur server exited with {proc.returncode}")
    return proc, f"127.0.0.1:{json.loads(line)['port']}"


def stop_server(proc):
    terminate(proc)


def _rank(rank, world, store, servers, n_params, steps, warmup, transport, out):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    opt = None
    try:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n_params // TENSORS) * 0.1) for _ in range(TENSORS)]
        g = torch.Generator().manual_seed(1 + rank)
        grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in params]
        opt = ZeroRedundancyOptimizer(
            params,
            optimizer_class=mur.RemoteOptimizer,
            server=servers if len(servers) > 1 else servers[0],
            optimizer="adam",
            rule="additive",
            lr=1e-3,
            transport=transport,
        )
        inner = opt.optim
        remote, total = time_calls(inner, "step"), []
        for _ in range(warmup + steps):
            for p, gr in zip(params, grads):
                p.grad = gr
            dist.barrier()  # every rank starts the step together
            t = time.perf_counter()
            opt.step()
            total.append(time.perf_counter() - t)
        mine = torch.tensor([sum(total[warmup:]) / steps, sum(remote[warmup:]) / steps], dtype=torch.float64)
        every = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(every, mine)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(
                    {
                        "step_s": max(float(e[0]) for e in every),
                        "remote_s": max(float(e[1]) for e in every),
                        "transport": inner.transport,
                    },
                    f,
                )
    finally:
        if opt is not None:
            opt.optim.close()
        dist.destroy_process_group()


def measure(n_servers, n_ranks, n_params, steps, warmup, transport):
    procs, d = [], tempfile.mkdtemp(prefix="mur-bench-scale-")
    try:
        for _ in range(n_servers):
            procs.append(start_server())
        servers = [a for _, a in procs]
        out = f"{d}/result.json"
        mp.spawn(
            _rank,
            args=(n_ranks, f"{d}/store", servers, n_params, steps, warmup, transport, out),
            nprocs=n_ranks,
            join=True,
        )
        with open(out) as f:
            return json.load(f)
    finally:
        for p, _ in procs:
            stop_server(p)
        shutil.rmtree(d, ignore_errors=True)


def on_paper(n_servers, n_ranks, n_params, engine_params_per_s, gbps, rtt_us):
    """Seconds per step with every server and rank on its own host (see the module docstring)."""
    link = gbps * 1e9 / 8
    rtt = rtt_us * 1e-6
    per_rank = 4 * n_params / n_ranks
    b = link * min(1.0, n_servers / n_ranks)  # the busier end of each transfer
    # One server: its step alone is all or nothing. Several: the rank checks
    # its gradients (one pass at ~5 GB/s), the servers the rest, no tensor sent.
    validate = rtt + per_rank / 5e9 if n_servers > 1 else 0.0
    apply = rtt + per_rank / b + (n_params / n_servers) / engine_params_per_s + per_rank / b
    remote = validate + apply
    broadcast = 4 * n_params * (n_ranks - 1) / n_ranks / link
    return remote, remote + broadcast


def _fmt_params(n):
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=_ints, default=[1, 2, 4])
    ap.add_argument("--ranks", type=_ints, default=[1, 2, 4])
    ap.add_argument("--params", type=lambda s: [_size(x) for x in s.split(",")], default=[4_000_000, 16_000_000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--transport",
        choices=["grpc", "tcp", "shm"],
        default="tcp",
        help='tcp (default: what "auto" picks for servers on other hosts), grpc messages, or shm',
    )
    ap.add_argument("--gbps", type=float, default=10.0, help="link bandwidth of the paper table (Gb/s)")
    ap.add_argument("--rtt-us", type=float, default=100.0, help="round-trip time of the paper table (us)")
    ap.add_argument("--out", help="also write the rows as JSON lines to this file")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0:
        ap.error(f"--steps {a.steps} --warmup {a.warmup}: at least one step, warm-up >= 0")
    started = time.monotonic()
    print(
        f"mur bench-scale: Adam additive, {TENSORS} tensors, transport {a.transport} on loopback, "
        f"{os.cpu_count()} cores, {a.steps} timed steps after {a.warmup}",
        flush=True,
    )
    rows = []
    for n in a.params:
        # The engine speed for the paper table: one server, one rank, shared memory.
        e = measure(1, 1, n, a.steps, a.warmup, "shm")
        engine = n / e["remote_s"]
        for s in a.servers:
            for r in a.ranks:
                m = measure(s, r, n, a.steps, a.warmup, a.transport)
                remote_p, step_p = on_paper(s, r, n, engine, a.gbps, a.rtt_us)
                row = {
                    "params": n,
                    "servers": s,
                    "ranks": r,
                    "transport": m["transport"],
                    "steps_per_s": 1 / m["step_s"],
                    "remote_ms": 1e3 * m["remote_s"],
                    "paper_steps_per_s": 1 / step_p,
                    "paper_remote_ms": 1e3 * remote_p,
                    "engine_mparams_per_s": engine / 1e6,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        "| params | servers | ranks | steps/s (here) | remote step ms (here) | steps/s (separate hosts) | "
        "remote step ms (separate hosts) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {_fmt_params(r['params'])} | {r['servers']} | {r['ranks']} | {r['steps_per_s']:.2f} | "
            f"{r['remote_ms']:.1f} | {r['paper_steps_per_s']:.2f} | {r['paper_remote_ms']:.1f} |"
        )
    engines = sorted({(r["params"], r["engine_mparams_per_s"]) for r in rows})
    print()
    print(
        f"Separate hosts: {a.gbps:g} Gb/s links (full duplex), {a.rtt_us:g} us round trip, tensors on the wire (gRPC or tcp), "
        f"engine speed as measured here on shm with 1 server: "
        + ", ".join(f"{_fmt_params(n)}: {e:.0f} Mparam/s" for n, e in engines)
        + "."
    )
    print(f"Took {time.monotonic() - started:.0f} s.")
    if a.out:
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
