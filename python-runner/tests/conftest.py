"""Servers shared by the test modules (one per module, freed at its end),
server_for(), which picks the server a transport needs, and the helpers
several modules use: a server started from the CLI on TCP, a small model,
its batches and its parameters' bits."""

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

import mur

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "ts-server" / "native" / "build" / "Release" / "mur_native.node"
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"


def read_line(proc, timeout=60):
    """The first line the server prints (where it listens), or fail after `timeout` seconds."""
    fd, buf, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"mur server: no line within {timeout} s (got {buf!r})")
        part = os.read(fd, 65536)
        if not part:
            raise AssertionError(f"mur server: exited before printing a line (got {buf!r})")
        buf += part
    return buf.split(b"\n", 1)[0].decode()


def start_tcp(*args, port=0):
    """A server from the CLI on TCP (stdin kept open: it dies with this test
    process); (process, what it printed: port, data_port, tls, ...)."""
    proc = subprocess.Popen(
        ["node", str(CLI), "--port", str(port), "--exit-with-stdin", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MUR_LOG": "silent"},
    )
    try:
        return proc, json.loads(read_line(proc))
    except BaseException:
        stop(proc)
        raise


def stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    for f in (proc.stdin, proc.stdout):
        if f:
            f.close()


def net(seed=0, width=4, sizes=None):
    """A small tanh MLP, seeded: sizes (in, hidden..., out), default (5, width, 2)."""
    torch.manual_seed(seed)
    sizes = sizes or (5, width, 2)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [torch.nn.Tanh()] if i else []
        layers.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*layers)


def max_diff(a, b):
    """The largest elementwise difference between two models' parameters."""
    return max((p.detach() - q.detach()).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def against_reference(server, make, train, optimizer, rule, h, steps=20):
    """One model from ``make()`` trained ``steps`` steps by ``train(model, opt, steps)``
    through the server and another by mur.reference, ``optimizer`` under ``rule``
    (gamma 0.5 for hybrid, so its own hyperparameter is not the default):
    (their largest difference, how far the server moved the parameters)."""
    import mur
    from mur import reference

    a, b = make(), make()
    h = dict(h, **(dict(gamma=0.5) if rule == "hybrid" else {}))
    opt = mur.RemoteOptimizer(a.parameters(), optimizer=optimizer, rule=rule, server=server, **h)
    try:
        train(a, opt, steps)
        train(b, reference.Optimizer(b.parameters(), optimizer=optimizer, rule=rule, **h), steps)
        return max_diff(a, b), max_diff(a, make())
    finally:
        opt.close()


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)) for _ in range(n)]


def bits(model):
    return [p.detach().reshape(-1).view(torch.int32).clone() for p in model.parameters()]


def same_bits(a, b):
    """Bit for bit equal: models, or lists of bits()."""
    return all(
        torch.equal(x, y)
        for x, y in zip(
            bits(a) if isinstance(a, torch.nn.Module) else a, bits(b) if isinstance(b, torch.nn.Module) else b
        )
    )


@pytest.fixture
def scratch():
    """A private temporary directory (sockets, state dirs), removed after the
    test however it ends, a failure before the test's own try included."""
    d = tempfile.mkdtemp(prefix="mur-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    with mur.LocalServer() as s:
        yield s.address


@pytest.fixture(scope="module")
def native_server():
    with mur.LocalServer(backend="native") as s:
        yield s.address


@pytest.fixture(scope="module")
def wasm_server():
    with mur.LocalServer(backend="wasm") as s:
        yield s.address


@pytest.fixture
def server_for(request):
    """server_for(transport): the native engine's server for shm; any server for grpc."""

    def pick(transport):
        if transport == "shm":
            if not ADDON.exists():
                pytest.skip("the shm transport needs the native engine (make native-engine)")
            return request.getfixturevalue("native_server")
        return request.getfixturevalue("server")

    return pick
