"""python -m mur.bench_e2e: a RemoteOptimizer step against a local torch.optim step.

For Adam and SGD-momentum at 100k, 1M and 4M float32 parameters: the time of
a torch.optim step, of a RemoteOptimizer step (gradients out, parameters back,
on a local server), their ratio, and the bytes per second on the wire. Then
where a remote step's time goes: the client's encoding (tensor -> bytes ->
protobuf), its decoding (protobuf -> tensor copy), and the rest (gRPC transfer
and the server's work; `make bench-engine` measures the server's maths alone).
"""
import argparse
import json
import time

import torch

import mur
from mur.optimizer import F32, _f32_bytes, _read_only_view, pb

CONFIGS = [("adam", {}), ("sgd", {"lr": 0.01, "momentum": 0.9})]
TORCH = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def timed(fn, min_seconds):
    fn()
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - start
        if n >= 3 and el >= min_seconds:
            return el / n * 1e3


def bench(name, h, n, address, min_seconds):
    torch.manual_seed(0)
    local = torch.nn.Parameter(torch.randn(n))
    remote = torch.nn.Parameter(local.detach().clone())
    grad = torch.randn(n) * 0.01
    local.grad, remote.grad = grad.clone(), grad.clone()
    t_opt = TORCH[name]([local], **({"lr": 1e-3} | h if name == "adam" else h))
    r_opt = mur.RemoteOptimizer([remote], optimizer=name, rule="additive", server=address, **h)
    try:
        local_ms = timed(t_opt.step, min_seconds)
        remote_ms = timed(r_opt.step, min_seconds)

        def encode():
            return pb.StepRequest(session_id="x", step=1, grads=[pb.Gradient(
                param_id="p0.0", grad=pb.Tensor(shape=[n], dtype=F32, data=_f32_bytes(grad)))]).SerializeToString()
        wire = pb.StepReply(step=1, params=[pb.ParamValue(param_id="p0.0", value=pb.Tensor(
            shape=[n], dtype=F32, data=_f32_bytes(remote)))]).SerializeToString()

        def decode():
            r = pb.StepReply.FromString(wire)
            with torch.no_grad():
                remote.copy_(_read_only_view(r.params[0].value.data))
        encode_ms = timed(encode, min_seconds / 2)
        decode_ms = timed(decode, min_seconds / 2)
    finally:
        r_opt.close()
    wire_bytes = 2 * 4 * n  # gradients out, parameters back
    return {"optimizer": name if name == "adam" else "sgd-momentum", "params": n, "local_ms": round(local_ms, 3),
            "remote_ms": round(remote_ms, 3), "ratio": round(remote_ms / local_ms, 2),
            "wire_mb_per_s": round(wire_bytes / (remote_ms / 1e3) / 1e6, 1),
            "encode_ms": round(encode_ms, 3), "decode_ms": round(decode_ms, 3),
            "transfer_and_server_ms": round(remote_ms - encode_ms - decode_ms, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,4000000")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timing per measurement")
    ap.add_argument("--backend", default=None, help="server backend (default: the server's choice)")
    a = ap.parse_args(argv)
    rows = []
    with mur.LocalServer(backend=a.backend) as server:
        print(f"server backend {server.backend}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        for name, h in CONFIGS:
            for n in map(int, a.sizes.split(",")):
                rows.append(bench(name, h, n, server.address, a.seconds))
                r = rows[-1]
                print(f"{r['optimizer']:13} {n:>8}  local {r['local_ms']:8.2f} ms  remote {r['remote_ms']:8.2f} ms  "
                      f"ratio {r['ratio']:6.1f}  wire {r['wire_mb_per_s']:7.1f} MB/s  | encode {r['encode_ms']:6.2f} "
                      f"decode {r['decode_ms']:6.2f} transfer+server {r['transfer_and_server_ms']:7.2f} ms", flush=True)
    keys = ["optimizer", "params", "local_ms", "remote_ms", "ratio", "wire_mb_per_s"]
    for r in rows:
        print(json.dumps({k: r[k] for k in keys}))


if __name__ == "__main__":
    main()
