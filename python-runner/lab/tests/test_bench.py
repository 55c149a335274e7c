"""The benchmarks end to end at tiny sizes (`make bench-e2e`, `make bench-train`,
`make bench-lane`), run as a user runs them, their JSON lines read back: every
contender and row is there and each ratio is the quotient of its two times. No timing is asserted. Also the timer
that alternates the contenders, and the transformer the training bench adds."""

import json
import subprocess
import sys

import pytest
import torch

from mur_lab import bench_train, models


def run_bench(module, args, tmp_path):
    out = tmp_path / "rows.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout, [json.loads(line) for line in out.read_text().splitlines()]


def has_fused_cpu(cls=torch.optim.Adam, **hypers):
    """Whether this torch has a fused CPU step of ``cls`` (torch >= 2.4 for Adam)."""
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    try:
        cls([p], lr=0.01, **hypers, fused=True).step()
    except Exception:
        return False
    return True


def test_bench_e2e_quick(tmp_path):
    stdout, rows = run_bench(
        "mur_lab.bench_e2e",
        ["--quick", "--sizes", "1000,list", "--threads", "1", "--grads", "backward,arena"],
        tmp_path,
    )
    steps = [r for r in rows if "grads" in r]
    fused = {"adam": has_fused_cpu(), "sgd-momentum": has_fused_cpu(torch.optim.SGD, momentum=0.9)}
    for optimizer in ("adam", "sgd-momentum"):
        for params, tensors in ((1000, 1), (940800, 300)):
            for grads in ("backward", "arena"):
                group = [
                    r
                    for r in steps
                    if (r["optimizer"], r["params"], r["tensors"], r["grads"]) == (optimizer, params, tensors, grads)
                ]
                assert {(r["transport"], r["wire_dtype"]) for r in group} == {
                    ("shm", None),
                    ("tcp", "float32"),
                    ("tcp", "bfloat16"),
                    ("grpc", "float32"),
                    ("grpc", "bfloat16"),
                }, group
                for r in group:
                    assert r["threads"] == 1 and r["default_ms"] > 0 and r["foreach_ms"] > 0
                    assert (r["fused_ms"] is not None) == fused[optimizer]
                    if r["transport"] == "shm":  # shm and the loopback server are always there here
                        assert "skipped" not in r, r
                    if "skipped" in r:
                        continue
                    assert r["remote_ms"] > 0 and r["steps"] >= 10
                    assert r["ratio_default"] == pytest.approx(r["remote_ms"] / r["default_ms"], rel=0.01, abs=0.01)
                    if r["fused_ms"]:
                        assert r["ratio_fused"] == pytest.approx(r["remote_ms"] / r["fused_ms"], rel=0.01, abs=0.01)
                    if r["transport"] != "shm":
                        assert r["mb_per_s_up"] > 0 and r["mb_per_s_down"] > 0
    assert {r["model"] for r in rows if "model" in r} == {"mlp", "cnn"}
    assert {r["ceiling"] for r in rows if "ceiling" in r} == {"grpc", "raw"}
    assert "/fused" in stdout and "Step rows" in stdout


def test_bench_train_quick(tmp_path):
    stdout, rows = run_bench("mur_lab.bench_train", ["--quick"], tmp_path)
    train = {r["model"]: r for r in rows if "model" in r}
    assert set(train) == {"mlp", "cnn", "transformer"}
    for r in train.values():
        assert r["batch"] == 128 and r["fused_ms"] > 0 and r["mur_ms"] > 0
        assert r["torch_mode"] == ("fused" if has_fused_cpu(torch.optim.AdamW) else "default")
        assert r["mur_over_fused"] == pytest.approx(r["mur_ms"] / r["fused_ms"], rel=0.01)
        lo, hi = r["mur_spread_ms"]
        assert lo <= r["mur_ms"] <= hi
        if r["overlap_ms"] is None:  # a mur before overlap=: the column says so
            assert r["overlap_skipped"] == "this mur has no overlap"
        else:
            assert r["overlap_buys_ms"] == pytest.approx(r["mur_ms"] - r["overlap_ms"], abs=1e-2)
    assert "n/a" in stdout or all(r["overlap_ms"] for r in train.values())
    (step,) = [r for r in rows if "limit_ms" in r]
    assert step["params"] == 100_000 and step["threads"] == 2 and step["limit_threads"] == 2
    assert step["mur_ms"] > 0 and step["fused_ms"] > 0 and step["limit_ms"] > 0
    # mur_of_limit comes from the unrounded times, the *_ms fields are rounded to 3 decimals: at the
    # quick run's 100k parameters limit_ms is a few hundredths of a ms, so that rounding alone moves
    # limit_ms / mur_ms by more than 1%. Bound the ratio by the rounding (and its own 3 decimals).
    half = 5e-4
    lo = (step["limit_ms"] - half) / (step["mur_ms"] + half)
    hi = (step["limit_ms"] + half) / (step["mur_ms"] - half)
    assert lo - half <= step["mur_of_limit"] <= hi + half


def test_bench_lane_quick(tmp_path):
    stdout, rows = run_bench("mur_lab.bench_lane", ["--quick"], tmp_path)
    cells = {(r["params"], r["threads"], r["gap_us"]): r for r in rows}
    assert set(cells) == {(n, t, g) for n in (1, 100_000) for t in (1, 2) for g in (0, 100, 500)}
    for r in cells.values():
        assert r["fused_ms"] > 0 and r["step_ms"] > 0 and r["calls"] >= 10
        assert r["step_over_fused"] == pytest.approx(r["step_ms"] / r["fused_ms"], rel=0.01)
        # Same hyperparameters every step, gradient in place: the armed lane answers them
        # (an RPC is its fallback only after a 2 s wait); the round trip is part of the step.
        assert r["lane_share"] > 0.9 and r["lane_ms"] > 0, r
    assert "step/fused" in stdout


def test_blocks_alternate_and_take_medians():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or name) for name in ("a", "b")}
    seconds = {"a": iter([1.0, 1.0, 3.0, 3.0, 2.0, 2.0]), "b": iter([4.0, 4.0, 6.0, 6.0, 5.0, 5.0])}
    ms = bench_train.blocks(
        fns, rounds=3, block=2, warmup=1, timers={k: (lambda _, k=k: next(seconds[k])) for k in fns}
    )
    # one warm-up each (untimed), then blocks of two in the order a b, b a, a b
    assert calls == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert ms == {"a": (2000.0, 1000.0, 3000.0), "b": (5000.0, 4000.0, 6000.0)}


def test_transformer_is_a_small_classifier():
    torch.manual_seed(0)
    net = models.transformer()
    assert 400_000 < sum(p.numel() for p in net.parameters()) < 700_000
    x = torch.rand(5, 1, 28, 28)
    logits = net(x)
    assert logits.shape == (5, 10)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
