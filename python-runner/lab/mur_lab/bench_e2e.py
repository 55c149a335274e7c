"""python -m mur_lab.bench_e2e: what a training loop pays for mur.RemoteOptimizer
against torch.optim's default, foreach and fused steps, on every transport, in one run.

1. Step rows. Adam (torch's defaults) and SGD with momentum 0.9 (lr 0.01),
   with mur's additive rule (the same maths as torch), at 1, 100k, 1M and 4M
   float32 parameters in one tensor, 64M (Adam, shm only), and as a 300-tensor
   list shaped like a small transformer's (100 tensors of 96x96 and 200 of 96:
   0.94M); with 1 and 2 threads (torch.set_num_threads and the server's engine
   threads alike). Only opt.step() is timed. torch.optim's for-loop
   (foreach=False), foreach and fused implementations (those this torch has:
   torch 1.13 has no fused CPU kernel) in this process against RemoteOptimizer over
     shm             shared memory on this host (server="auto"); gRPC carries
                     only control,
     tcp float32     a server on loopback TCP (as if on another host): the
                     tensor bytes on the server's data port beside gRPC,
     tcp bfloat16    the same with bfloat16 gradients,
     grpc float32    the same server: gradients and parameters in gRPC messages,
     grpc bfloat16   the same with bfloat16 gradients on the wire.
   The gradients are made, untimed, before every step (--grads):
     backward   the optimizer's own zero_grad(), then a backward writing each
                gradient once: on torch 2.x p.grad is a fresh tensor every step
                and mur copies it into the arena (the user's loop);
     arena      kept from the step before (on shm p.grad views the arena): no copy;
     own        p.grad set to the user's own tensor, the same every step.
   The remote time includes copying the gradients in and, on tcp and grpc, the
   parameters back. /fused and /default: remote ms over that torch ms. MB/s up
   and down (tcp, grpc): gradient bytes sent and parameter bytes received per
   second of step time.
0. First, the wire's ceiling: the same bytes echoed by a server that does
   nothing (ts-server/bench/echo.ts), through grpc-js + grpcio and through a
   plain socket, so the transports' rows can be read against what the wire
   itself costs on this machine.
2. Training rows. Fashion-MNIST MLP and CNN (mur_lab.models), batches of 64:
   ms per batch (zero_grad, forward, backward, step) with torch.optim.Adam's
   default step against RemoteOptimizer(optimizer="adam", rule="additive") on
   shm, tcp and grpc (make bench-train compares training with torch's fused AdamW).

Every number is a median of per-call times after warm-up. The contenders of
a row take turns in short bursts, so load on a shared machine hits them
alike and their ratio stays fair. Each row starts its own shm server (about
1.5 s). The full run took 45 minutes at load 10-16 on 2 cores; --quick is a
1-4 minute smoke run; --sizes, --threads, --grads and --no-train choose rows.

    make bench-e2e      (torch 2.x from .venv-torch2; BENCH_E2E_ARGS for the flags)
    PYTHONPATH=python-runner:python-runner/lab .venv-torch2/bin/python -m mur_lab.bench_e2e [--quick] [--out FILE]

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
from mur_lab.bench_train import (
    backward_after_zero_grad,
    emit_rows,
    fashion_batches,
    interleaved,
    model,
    omp_wait_policy,
    trainer,
)

OPTIMIZERS = [
    ("adam", torch.optim.Adam, {"lr": 1e-3}),
    ("sgd-momentum", torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
]
LIST_SHAPES = [(96, 96), (96,), (96,)] * 100  # per block: a weight, its bias, a norm's weight
TRANSPORTS = [("shm", None), ("tcp", "float32"), ("tcp", "bfloat16"), ("grpc", "float32"), ("grpc", "bfloat16")]
TRAIN_TRANSPORTS = [("shm", None), ("tcp", "float32"), ("grpc", "float32")]
# torch.optim's three implementations of one algorithm, as the local sides of every step row.
LOCAL_MODES = {"default": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
WIRE_MAX = 4_000_000  # above this the rows are shm only (64M through gRPC is ~256 MB each way a step)
BIG_OPTIMIZERS = ("adam",)  # sizes above WIRE_MAX are measured for these only (each row takes ~1 min)
GRADS = ("backward", "arena", "own")
_TCP = {}  # the loopback TCP servers of this run, by engine threads: {threads: (Popen, "127.0.0.1:N")}


def tcp_server(threads):
    """One server on loopback TCP with this many engine threads for the tcp and grpc
    rows (as a server on another host would be reached), started on first use,
    stopped at exit."""
    if threads not in _TCP:
        import atexit
        import subprocess

        from mur.server import find_server_cli

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

        def stop():
            proc.kill()
            proc.wait()

        atexit.register(stop)
        _TCP[threads] = (proc, f"127.0.0.1:{info['port']}")
    return _TCP[threads][1]


FULL = dict(
    sizes=[1, 100_000, 1_000_000, 4_000_000, 64_000_000, "list"],
    threads=[1, 2],
    grads=["backward", "arena"],
    seconds=3.0,
    min_calls=20,
    max_calls=1000,
    ceiling_bytes=[4_000_000, 16_000_000],
    models=["mlp", "cnn"],
    batches=300,
)
QUICK = dict(
    sizes=[100_000, "list"],
    threads=[1, 2],
    grads=["backward", "arena"],
    seconds=0.3,
    min_calls=10,
    max_calls=100,
    models=["mlp", "cnn"],
    batches=20,
    ceiling_bytes=[4_000_000],
)


def remote(params, optimizer, transport, wire_dtype, threads=None, **hypers):
    """RemoteOptimizer with the additive rule on this transport (an error if unavailable): shm
    through server="auto", tcp and grpc through the loopback server; ``threads`` engine threads
    (None: the server's default, every core)."""
    name = "sgd" if optimizer == "sgd-momentum" else optimizer
    if transport == "shm":
        server = "auto"
        saved = os.environ.get("MUR_THREADS")
        os.environ["MUR_THREADS"] = str(threads or 0)  # read by the server "auto" starts
    else:
        server = tcp_server(threads or 0)
    try:
        opt = mur.RemoteOptimizer(
            params,
            optimizer=name,
            rule="additive",
            server=server,
            transport=transport,
            wire_dtype=wire_dtype or "float32",
            **hypers,
        )
    finally:
        if transport == "shm":
            os.environ.pop("MUR_THREADS") if saved is None else os.environ.update(MUR_THREADS=saved)
    if opt.transport != transport:
        opt.close()
        raise ValueError(f"asked for transport {transport}, got {opt.transport}")
    return opt


def local_modes(torch_cls, hypers):
    """{mode: None or why this torch cannot}: each of LOCAL_MODES tried on one small step
    (torch 1.13 has no fused CPU kernel; its constructor or its first step refuses)."""
    out = {}
    for mode, kw in LOCAL_MODES.items():
        try:
            p = torch.nn.Parameter(torch.zeros(4))
            p.grad = torch.ones(4)
            torch_cls([p], **hypers, **kw).step()
            out[mode] = None
        except Exception as e:
            out[mode] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return out


def contenders(make_local, make_remote, transports, local_keys=("local",)):
    """{local key: torch optimizer, (transport, wire_dtype): RemoteOptimizer}, and why some are missing."""
    opts, skipped = {}, {}
    for key in local_keys:
        opts[key] = make_local(key)
    for key in transports:
        try:
            opts[key] = make_remote(*key)
        except Exception as e:  # an unavailable transport is a row to report, not a crash
            skipped[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return opts, skipped


def close(opts):
    for opt in opts.values():
        if isinstance(opt, mur.RemoteOptimizer):
            opt.close()


def own_grads(opt, grads):
    """p.grad set to the user's own tensor (the same one every step)."""
    for p, g in zip(opt.param_groups[0]["params"], grads):
        p.grad = g


def step_rows(optimizer, torch_cls, hypers, size, threads, grads_mode, cfg, modes):
    """One group of contenders measured side by side: torch's default, foreach and fused
    step (those this torch has, ``modes``) and the RemoteOptimizer step on every transport
    (shm only above WIRE_MAX), with ``threads`` torch and server threads. Only step() is
    timed; before each, untimed, the gradients are made as ``grads_mode`` says:

    backward  the optimizer's own zero_grad(), then a backward writing every gradient
              (torch 2.x: set_to_none=True, so p.grad is a fresh tensor each step and mur
              copies it into the arena; torch 1.13: zeroed in place, backward adds into it);
    arena     nothing: the gradients of the step before stay (on shm p.grad views the
              arena after the first step, so no copy is paid);
    own       p.grad set to the user's own tensor, the same every step (mur copies it in).
    """
    shapes = LIST_SHAPES if size == "list" else [(size,)]
    torch.manual_seed(0)
    init = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) * 1e-3 for s in shapes]  # small: parameters stay finite over many steps

    def params():
        return [torch.nn.Parameter(t.clone()) for t in init]

    n = sum(torch.Size(s).numel() for s in shapes)
    local_keys = [m for m, why in modes.items() if why is None]
    transports = TRANSPORTS if n <= WIRE_MAX else TRANSPORTS[:1]
    prepare = {"backward": backward_after_zero_grad, "own": own_grads, "arena": own_grads}[grads_mode]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    opts, skipped = contenders(
        lambda mode: torch_cls(params(), **hypers, **LOCAL_MODES[mode]),
        lambda tr, wd: remote(params(), optimizer, tr, wd, threads, **hypers),
        transports,
        local_keys,
    )
    try:
        for o in opts.values():  # every side starts with p.grad set
            own_grads(o, grads)
        ms, calls = interleaved(
            {k: o.step for k, o in opts.items()},
            cfg["seconds"],
            cfg["min_calls"],
            cfg["max_calls"],
            prepare={} if grads_mode == "arena" else {k: functools.partial(prepare, o, grads) for k, o in opts.items()},
        )
        for k, o in opts.items():
            if not all(torch.isfinite(p).all() for p in o.param_groups[0]["params"]):
                skipped[k] = "parameters are not finite after the run"
    finally:
        close(opts)
        torch.set_num_threads(torch_threads)
    local = {m: None if m in skipped else ms.get(m) for m in LOCAL_MODES}
    rows = []
    for tr, wd in transports:
        r = {
            "optimizer": optimizer,
            "params": n,
            "tensors": len(shapes),
            "threads": threads,
            "grads": grads_mode,
            "transport": tr,
            "wire_dtype": wd,
            **{f"{m}_ms": None if t is None else round(t, 4) for m, t in local.items()},
            "remote_ms": None,
            "ratio_fused": None,
            "ratio_default": None,
            "mb_per_s_up": None,
            "mb_per_s_down": None,
            "steps": calls,
        }
        if (tr, wd) in skipped:
            r["skipped"] = skipped[(tr, wd)]
        else:
            t = ms[(tr, wd)]
            r["remote_ms"] = round(t, 4)
            for m in ("fused", "default"):
                r[f"ratio_{m}"] = round(t / local[m], 2) if local[m] else None
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
        lambda key: make(key, lambda ps: torch.optim.Adam(ps, lr=1e-3)),
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
    ap.add_argument("--sizes", help="step rows' parameters, comma-separated: integers and 'list' (default: all)")
    ap.add_argument("--threads", help="torch and server threads of the step rows, comma-separated (default 1,2)")
    ap.add_argument("--grads", help=f"how gradients are made, comma-separated of {', '.join(GRADS)}")
    ap.add_argument("--no-train", action="store_true", help="skip the Fashion-MNIST rows")
    a = ap.parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    if a.sizes:
        cfg["sizes"] = [s if s == "list" else int(float(s)) for s in a.sizes.split(",")]
    if a.threads:
        cfg["threads"] = [int(t) for t in a.threads.split(",")]
    if a.grads:
        cfg["grads"] = a.grads.split(",")
        if set(cfg["grads"]) - set(GRADS):
            ap.error(f"--grads={a.grads}: each must be one of {', '.join(GRADS)}")
    if a.no_train:
        cfg["models"] = []

    caps, server_threads = environment()
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); server engine {caps.backend} "
        f"({server_threads} threads); server transports {', '.join(caps.transports) or 'grpc'}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {omp_wait_policy()}"
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
        "\nStep rows: ms per opt.step() (median), torch's default (for-loop), foreach and fused steps beside "
        "RemoteOptimizer's on each transport; /fused and /default: remote ms over that torch ms. thr: torch and "
        "server threads. grads: backward = the optimizer's zero_grad() then a backward before every step, "
        "arena = the gradients kept (on shm in the arena), own = p.grad set to the user's tensor"
    )
    for optimizer, torch_cls, hypers in OPTIMIZERS:
        modes = local_modes(torch_cls, hypers)
        for mode, why in modes.items():
            if why:
                print(f"  torch {torch.__version__} {optimizer} {mode}: n/a ({why})")
    print(
        f"{'optimizer':13} {'params':>9} {'tensors':>7} {'thr':>3} {'grads':8} {'transport':9} {'wire':8} "
        f"{'default':>8} {'foreach':>8} {'fused':>8} {'remote':>8} {'/fused':>6} {'/default':>8} "
        f"{'up MB/s':>8} {'down MB/s':>9}",
        flush=True,
    )
    for threads in cfg["threads"]:
        for optimizer, torch_cls, hypers in OPTIMIZERS:
            modes = local_modes(torch_cls, hypers)
            for size in cfg["sizes"]:
                if size != "list" and size > WIRE_MAX and optimizer not in BIG_OPTIMIZERS:
                    continue
                for grads_mode in cfg["grads"]:
                    for r in step_rows(optimizer, torch_cls, hypers, size, threads, grads_mode, cfg, modes):
                        rows.append(r)
                        print(
                            f"{r['optimizer']:13} {r['params']:>9} {r['tensors']:>7} {r['threads']:>3} "
                            f"{r['grads']:8} {r['transport']:9} {r['wire_dtype'] or '-':8} "
                            f"{fmt(r['default_ms'], '8.3f')} {fmt(r['foreach_ms'], '8.3f')} "
                            f"{fmt(r['fused_ms'], '8.3f')} {fmt(r['remote_ms'], '8.3f')} "
                            f"{fmt(r['ratio_fused'], '6.2f')} {fmt(r['ratio_default'], '8.2f')} "
                            f"{fmt(r['mb_per_s_up'], '8.3g')} {fmt(r['mb_per_s_down'], '9.3g')}"
                            + (f"  skipped: {r['skipped']}" if "skipped" in r else ""),
                            flush=True,
                        )

    if cfg["models"]:
        batches = fashion_batches(100)
        print(
            f"\nFashion-MNIST, batch {len(batches[0][1])}, torch.optim.Adam (its default step) lr 1e-3: ms per batch (forward + backward + step), "
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

    emit_rows(rows, a.out)


if __name__ == "__main__":
    main()
