"""python -m mur_lab.bench_e2e: what a training loop pays for mur.RemoteOptimizer
against torch.optim, on every transport, in one run.

1. Step rows. Adam (torch's defaults) and SGD with momentum 0.9 (lr 0.01),
   with mur's additive rule (the same maths as torch), at 1, 100k, 1M and 4M
   float32 parameters in one tensor, and as a 300-tensor list shaped like a
   small transformer's (100 tensors of 96x96 and 200 of 96: 0.94M). Only
   opt.step() is timed, with fixed small random gradients in p.grad:
   torch.optim's default implementation in this process against
   RemoteOptimizer over
     shm             shared memory on this host (server="auto"); gRPC carries
                     only control,
     tcp float32     a server on loopback TCP (as if on another host): the
                     tensor bytes on the server's data port beside gRPC,
     tcp bfloat16    the same with bfloat16 gradients,
     grpc float32    the same server: gradients and parameters in gRPC messages,
     grpc bfloat16   the same with bfloat16 gradients on the wire.
   The remote time includes copying the gradients in (p.grad is set to the
   user's own tensor, untimed, before every step, as after a backward() into
   fresh gradients) and, on grpc, the parameters back.
   MB/s up and down (tcp, grpc): gradient bytes sent and parameter bytes received
   per second of step time.
0. First, the wire's ceiling: the same bytes echoed by a server that does
   nothing (ts-server/bench/echo.ts), through grpc-js + grpcio and through a
   plain socket, so the transports' rows can be read against what the wire
   itself costs on this machine.
2. Training rows. Fashion-MNIST MLP and CNN (mur_lab.models), batches of 64:
   ms per batch (zero_grad, forward, backward, step) with torch.optim.Adam
   against RemoteOptimizer(optimizer="adam", rule="additive") on shm, tcp and grpc.
   This is torch 1.13's own loop: zero_grad() keeps the gradient tensors, so
   on shm backward() accumulates straight into the arena and no copy is paid.

Every number is a median of per-call times after warm-up. The contenders of
a row take turns in short bursts, so load on a shared machine hits them
alike and their ratio stays fair. Each row starts its own servers (about
1.5 s each). The full run takes about 2 minutes; --quick is a ~20 s smoke run.

    make bench-e2e
    cd python-runner/lab && ../../.venv/bin/python -m mur_lab.bench_e2e [--quick] [--out FILE]

--out FILE also writes the JSON lines (one per row) to FILE.
"""

import argparse
import functools
import json
import os

import grpc
import torch

import mur
from mur._proto.mur.v1 import optimizer_pb2 as pb
from mur._proto.mur.v1 import optimizer_pb2_grpc as pbg
from mur_lab.bench_train import fashion_batches, interleaved, model, trainer

OPTIMIZERS = [
    ("adam", torch.optim.Adam, {"lr": 1e-3}),
    ("sgd-momentum", torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
]
LIST_SHAPES = [(96, 96), (96,), (96,)] * 100  # per block: a weight, its bias, a norm's weight
TRANSPORTS = [("shm", None), ("tcp", "float32"), ("tcp", "bfloat16"), ("grpc", "float32"), ("grpc", "bfloat16")]
TRAIN_TRANSPORTS = [("shm", None), ("tcp", "float32"), ("grpc", "float32")]
_TCP = {}  # the loopback TCP server of this run: {"proc": Popen, "address": "127.0.0.1:N"}


def tcp_server():
    """One server on loopback TCP for the tcp and grpc rows (as a server on
    another host would be reached), started on first use, stopped at exit."""
    if not _TCP:
        import atexit
        import subprocess

        from mur.server import find_server_cli

        proc = subprocess.Popen(
            ["node", str(find_server_cli()), "--port", "0", "--exit-with-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MUR_LOG": "silent"},
        )
        info = json.loads(proc.stdout.readline() or "{}")
        if "port" not in info:
            proc.kill()
            raise RuntimeError("the loopback TCP server did not start")

        def stop():
            proc.kill()
            proc.wait()

        atexit.register(stop)
        _TCP.update(proc=proc, address=f"127.0.0.1:{info['port']}")
    return _TCP["address"]


FULL = dict(
    sizes=[1, 100_000, 1_000_000, 4_000_000, "list"],
    seconds=5.0,
    min_calls=20,
    max_calls=1000,
    ceiling_bytes=[4_000_000, 16_000_000],
    models=["mlp", "cnn"],
    batches=300,
)
QUICK = dict(
    sizes=[100_000, "list"],
    seconds=0.3,
    min_calls=10,
    max_calls=100,
    models=["mlp", "cnn"],
    batches=20,
    ceiling_bytes=[4_000_000],
)


def remote(params, optimizer, transport, wire_dtype, **hypers):
    """RemoteOptimizer(server="auto") with the additive rule on this transport (an error if unavailable)."""
    name = "sgd" if optimizer == "sgd-momentum" else optimizer
    server = "auto" if transport == "shm" else tcp_server()
    opt = mur.RemoteOptimizer(
        params,
        optimizer=name,
        rule="additive",
        server=server,
        transport=transport,
        wire_dtype=wire_dtype or "float32",
        **hypers,
    )
    if opt.transport != transport:
        opt.close()
        raise ValueError(f"asked for transport {transport}, got {opt.transport}")
    return opt


def contenders(make_local, make_remote, transports):
    """{"local": torch optimizer, (transport, wire_dtype): RemoteOptimizer}, and why some are missing."""
    opts, skipped = {"local": make_local()}, {}
    for key in transports:
        try:
            opts[key] = make_remote(*key)
        except Exception as e:  # an unavailable transport is a row to report, not a crash
            skipped[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return opts, skipped


def close(opts):
    for key, opt in opts.items():
        if key != "local":
            opt.close()


def step_rows(optimizer, torch_cls, hypers, size, cfg):
    shapes = LIST_SHAPES if size == "list" else [(size,)]
    torch.manual_seed(0)
    init = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) * 1e-3 for s in shapes]  # small: parameters stay finite over many steps

    def params():
        return [torch.nn.Parameter(t.clone()) for t in init]

    def set_grads(opt):
        # Untimed, before every step: p.grad is the user's own tensor, as after a
        # backward() into fresh gradients (shm then pays for copying it in: its
        # step leaves p.grad pointing into the arena otherwise).
        for p, g in zip(opt.param_groups[0]["params"], grads):
            p.grad = g

    opts, skipped = contenders(
        lambda: torch_cls(params(), **hypers), lambda tr, wd: remote(params(), optimizer, tr, wd, **hypers), TRANSPORTS
    )
    try:
        ms, calls = interleaved(
            {k: o.step for k, o in opts.items()},
            cfg["seconds"],
            cfg["min_calls"],
            cfg["max_calls"],
            prepare={k: functools.partial(set_grads, o) for k, o in opts.items()},
        )
        for k, o in opts.items():
            if not all(torch.isfinite(p).all() for p in o.param_groups[0]["params"]):
                skipped[k] = "parameters are not finite after the run"
    finally:
        close(opts)
    n = sum(torch.Size(s).numel() for s in shapes)
    rows = []
    for tr, wd in TRANSPORTS:
        r = {
            "optimizer": optimizer,
            "params": n,
            "tensors": len(shapes),
            "transport": tr,
            "wire_dtype": wd,
            "local_ms": round(ms["local"], 4),
            "remote_ms": None,
            "ratio": None,
            "mb_per_s_up": None,
            "mb_per_s_down": None,
            "steps": calls,
        }
        if (tr, wd) in skipped:
            r["skipped"] = skipped[(tr, wd)]
        else:
            t = ms[(tr, wd)]
            r.update(remote_ms=round(t, 4), ratio=round(t / ms["local"], 2))
            if tr in ("grpc", "tcp"):
                up = n * (2 if wd == "bfloat16" else 4)
                r.update(mb_per_s_up=float(f"{up / t / 1e3:.3g}"), mb_per_s_down=float(f"{n * 4 / t / 1e3:.3g}"))
        rows.append(r)
    return rows


def train_rows(name, batches, cfg):
    nets = {}

    def make(key, build_opt):
        nets[key] = model(name)  # the same initial weights for every contender
        return build_opt(nets[key].parameters())

    opts, skipped = contenders(
        lambda: make("local", lambda ps: torch.optim.Adam(ps, lr=1e-3)),
        lambda tr, wd: make((tr, wd), lambda ps: remote(ps, "adam", tr, wd, lr=1e-3)),
        TRAIN_TRANSPORTS,
    )
    try:
        fns = {k: trainer(nets[k], o, batches) for k, o in opts.items()}
        ms, calls = interleaved(fns, 0, cfg["batches"], cfg["batches"], warmup=10, burst=10)
    finally:
        close(opts)
    n = sum(p.numel() for p in nets["local"].parameters())
    rows = []
    for tr, wd in TRAIN_TRANSPORTS:
        r = {
            "model": name,
            "params": n,
            "batch": len(batches[0][1]),
            "transport": tr,
            "wire_dtype": wd,
            "local_ms_per_batch": round(ms["local"], 3),
            "remote_ms_per_batch": None,
            "ratio": None,
            "batches": calls,
        }
        if (tr, wd) in skipped:
            r["skipped"] = skipped[(tr, wd)]
        else:
            r.update(remote_ms_per_batch=round(ms[(tr, wd)], 3), ratio=round(ms[(tr, wd)] / ms["local"], 2))
        rows.append(r)
    return rows


def ceiling_rows(cfg):
    """What the wire costs before mur does anything: n bytes up and n bytes
    back through (a) grpc-js + grpcio with an echo handler and mur's channel
    and server settings, (b) a plain socket with the tcp data plane's framing
    (ts-server/bench/echo.ts), side by side."""
    import socket
    import struct
    import subprocess
    from pathlib import Path

    import numpy as np

    from mur.server import find_server_cli

    echo = Path(find_server_cli()).resolve().parents[1] / "bench" / "echo.js"
    if not echo.is_file():
        return [{"ceiling": "skipped", "reason": f"{echo} not built"}]
    rows = []
    for n in cfg["ceiling_bytes"]:
        procs, fns = [], {}
        try:
            for mode in ("grpc", "raw"):
                proc = subprocess.Popen(
                    ["node", str(echo), mode, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
                procs.append(proc)
                port = int(proc.stdout.readline())
                if mode == "grpc":
                    channel = grpc.insecure_channel(
                        f"127.0.0.1:{port}",
                        options=[
                            ("grpc.max_send_message_length", -1),
                            ("grpc.max_receive_message_length", -1),
                            ("grpc.http2.max_frame_size", 16777215),
                            ("grpc.http2.lookahead_bytes", 16 << 20),
                        ],
                    )
                    call = channel.unary_unary("/bench.Echo/Echo")
                    payload = b"\x01" * n
                    fns["grpc"] = functools.partial(call, payload)
                else:
                    sock = socket.create_connection(("127.0.0.1", port))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    up = np.ones(n, np.uint8)
                    down = memoryview(np.empty(n + 4, np.uint8))

                    def raw(sock=sock, up=up, down=down, n=n):
                        sock.sendmsg([struct.pack("<I", n), up])
                        got = 0
                        while got < n + 4:
                            got += sock.recv_into(down[got:], n + 4 - got)

                    fns["raw"] = raw
            ms, calls = interleaved(fns, cfg["seconds"], cfg["min_calls"], cfg["max_calls"])
            for mode in ("grpc", "raw"):
                rows.append(
                    {
                        "ceiling": mode,
                        "bytes_each_way": n,
                        "ms": round(ms[mode], 3),
                        "mb_per_s_each_way": round(n / ms[mode] / 1e3),
                        "calls": calls,
                    }
                )
        finally:
            if "raw" in fns:
                sock.close()
            for proc in procs:
                proc.stdin.close()
                proc.wait()
    return rows


def environment():
    """Capabilities of a server as server="auto" starts it, and its engine threads (from its log)."""
    with mur.LocalServer() as server:
        channel = grpc.insecure_channel(server.address)
        caps = pbg.OptimizerStub(channel).GetCapabilities(pb.GetCapabilitiesRequest())
        channel.close()
        threads = "?"
        try:  # the server logs {"msg": "listening", ..., "threads": N} on stderr (a temporary file)
            with open(f"/proc/self/fd/{server._log.fileno()}") as log:
                threads = next(json.loads(line).get("threads", "?") for line in log if '"listening"' in line)
        except Exception:
            pass
    return caps, threads


def fmt(x, spec):
    """x formatted by spec ("9.3f"), or a dash of the same width when there is no value."""
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a ~20 s smoke run (fewer sizes, shorter timings)")
    ap.add_argument("--out", help="also write the JSON lines to this file")
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else FULL

    caps, server_threads = environment()
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); server engine {caps.backend} "
        f"({server_threads} threads); server transports {', '.join(caps.transports) or 'grpc'}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )

    rows = []
    print("\nThe wire's ceiling: an echo server doing nothing, n bytes up and n bytes back (loopback TCP)")
    for r in ceiling_rows(cfg):
        rows.append(r)
        if "ms" in r:
            print(
                f"  {r['ceiling']:5} {r['bytes_each_way'] / 1e6:5.0f} MB each way: {r['ms']:8.2f} ms, "
                f"{r['mb_per_s_each_way']:6} MB/s each way",
                flush=True,
            )
        else:
            print(f"  skipped: {r['reason']}")

    print(
        f"\n{'optimizer':13} {'params':>9} {'tensors':>7}  {'transport':9} {'wire':8} {'local ms':>9} "
        f"{'remote ms':>9} {'ratio':>7} {'up MB/s':>8} {'down MB/s':>9}",
        flush=True,
    )
    for optimizer, torch_cls, hypers in OPTIMIZERS:
        for size in cfg["sizes"]:
            for r in step_rows(optimizer, torch_cls, hypers, size, cfg):
                rows.append(r)
                print(
                    f"{r['optimizer']:13} {r['params']:>9} {r['tensors']:>7}  {r['transport']:9} "
                    f"{r['wire_dtype'] or '-':8} {r['local_ms']:9.3f} {fmt(r['remote_ms'], '9.3f')} "
                    f"{fmt(r['ratio'], '7.2f')} {fmt(r['mb_per_s_up'], '8.3g')} {fmt(r['mb_per_s_down'], '9.3g')}"
                    + (f"  skipped: {r['skipped']}" if "skipped" in r else ""),
                    flush=True,
                )

    batches = fashion_batches(100)
    print(
        f"\nFashion-MNIST, batch {len(batches[0][1])}, Adam lr 1e-3: ms per batch (forward + backward + step), "
        f"{cfg['batches']} batches each"
    )
    print(
        f"{'model':6} {'params':>7}  {'transport':9} {'wire':8} {'local ms':>9} {'remote ms':>9} {'ratio':>7}",
        flush=True,
    )
    for name in cfg["models"]:
        for r in train_rows(name, batches, cfg):
            rows.append(r)
            print(
                f"{r['model']:6} {r['params']:>7}  {r['transport']:9} {r['wire_dtype'] or '-':8} "
                f"{r['local_ms_per_batch']:9.3f} {fmt(r['remote_ms_per_batch'], '9.3f')} {fmt(r['ratio'], '7.2f')}"
                + (f"  skipped: {r['skipped']}" if "skipped" in r else ""),
                flush=True,
            )

    print(f"\nload average at the end {os.getloadavg()[0]:.2f}\n")
    lines = [json.dumps(r) for r in rows]
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
