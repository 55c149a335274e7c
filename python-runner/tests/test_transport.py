"""The same-host shared-memory transport, the gRPC fallback, bfloat16 gradients,
server="auto" on a Unix socket, and what happens when either side dies.

Every server, arena and session a test creates is freed by that test; waits
for other processes poll with deadlines."""

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import batches, bits, max_diff, net, same_bits

import mur
from mur import reference
from mur.optimizer import pb
from mur.planes import shm as shm_plane
from mur.planes.shm import Arena

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
ADDON = ROOT / "ts-server" / "native" / "build" / "Release" / "mur_native.node"
needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
needs_native = pytest.mark.skipif(
    not (CLI.exists() and ADDON.exists()), reason="the shm transport needs the native engine (make native-engine)"
)
pytestmark = needs_server


# -- helpers ------------------------------------------------------------------


def train(model, opt, steps, grad_hook=None, seed=1):
    for x, y in batches(steps, seed):

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            if grad_hook:
                grad_hook(model)
            return loss

        opt.step(closure)


def read_line(stream, timeout, what):
    """One line from a child's pipe, or fail after `timeout` seconds."""
    fd, buf, deadline = stream.fileno(), b"", time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: no line within {timeout} s (got {buf!r})")
        if select.select([fd], [], [], left)[0]:
            part = os.read(fd, 65536)
            if not part:
                raise AssertionError(f"{what}: exited before printing a line (got {buf!r})")
            buf += part
    return buf.split(b"\n", 1)[0].decode()


def start_cli(sock, *args):
    """A server started directly with the CLI on a Unix socket (stdin kept
    open, so it also dies with this test process)."""
    proc = subprocess.Popen(
        ["node", str(CLI), "--socket", str(sock), "--exit-with-stdin", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        info = json.loads(read_line(proc.stdout, 60, "mur server"))
    except BaseException:
        stop_proc(proc)
        raise
    assert info["socket"] == str(sock) and info["port"] == 0
    return proc


def wait_stopped(pid, timeout=10):
    """Until every thread of `pid` is stopped (SIGSTOP takes effect asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(st in ("T", "t") for st in states):
            return
    raise AssertionError(f"process {pid} did not stop")


def stop_proc(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f:
            f.close()


def exited(pid):
    """True when `pid` is gone or a zombie (its parent died: nobody may reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


# -- choosing a transport -------------------------------------------------------
@needs_native
@pytest.mark.skipif(
    os.environ.get("MUR_SERVER_BACKEND", "native") != "native", reason="MUR_SERVER_BACKEND picks a tfjs engine: no shm"
)
def test_auto_picks_shm_and_matches_grpc_bit_for_bit():
    a, b, c = net(), net(), net()
    h = dict(lr=0.01, gamma=0.5)
    oa = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid", **h)  # server="auto", transport="auto"
    ob = None
    try:
        assert oa.transport == "shm"
        assert oa._local.address.startswith("unix:")
        with pytest.raises(AttributeError):
            oa.transport = "grpc"  # read-only
        for _, pid, p in oa._params():  # the parameters are the arena
            assert p.data_ptr() == oa._plane.arena.param(oa._plane.arena.index[pid]).data_ptr()
        ob = mur.RemoteOptimizer(
            b.parameters(), optimizer="adam", rule="hybrid", server=oa._local.address, transport="grpc", **h
        )
        assert ob.transport == "grpc" and ob._plane.name == "grpc"
        train(a, oa, 20)
        train(b, ob, 20)
        train(c, reference.Optimizer(c.parameters(), optimizer="adam", rule="hybrid", **h), 20)
        assert same_bits(a, b), "shm and grpc compute the same trajectory, bit for bit"
        assert max_diff(a, c) < 1e-5  # the server vs torch maths: rounding only
        final = bits(a)
        arena = oa._plane.arena
        ptrs = {pid: p.data_ptr() for _, pid, p in oa._params()}
    finally:
        if ob:
            ob.close()  # first: oa stops the server they share
        oa.close()
    assert arena.closed
    for _, pid, p in oa._params():  # close() gave the parameters their own memory
        assert p.data_ptr() != ptrs[pid]
    assert same_bits(bits(a), final), "the model keeps the final values after close()"
    train(a, torch.optim.SGD(a.parameters(), lr=0.1), 2)  # and keeps working


@needs_native
def test_gradients_accumulate_in_the_arena(native_server):
    m = net()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="sgd", rule="additive", server=native_server, lr=0.1)
    try:
        assert opt.transport == "shm"
        x, y = batches(1)[0]
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()  # copies the fresh gradients in and points p.grad at the arena
        gviews = {pid: opt._plane.arena.grad(opt._plane.arena.index[pid]).data_ptr() for _, pid, _ in opt._params()}
        assert all(p.grad.data_ptr() == gviews[pid] for _, pid, p in opt._params())
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.mse_loss(m(x), y).backward()  # accumulates straight into shared memory
        assert all(p.grad.data_ptr() == gviews[pid] for _, pid, p in opt._params())
        g = [p.grad.clone() for p in m.parameters()]
        w = [p.detach().clone() for p in m.parameters()]
        opt.step()
        assert all(torch.allclose(p, w0 - 0.1 * g0, atol=1e-7) for p, w0, g0 in zip(m.parameters(), w, g))
    finally:
        opt.close()
    assert all(p.grad.data_ptr() != gviews[pid] for _, pid, p in opt._params()), "close() detached the gradients"


# -- user edits between steps -----------------------------------------------------
@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_weight_edits_are_what_the_next_step_starts_from(server_for, transport):
    address = server_for(transport)
    lr = 1e-4
    m = net(width=8)
    old = [p.detach().clone() for p in m.parameters()]
    opt = mur.RemoteOptimizer(
        m.parameters(), optimizer="sgd", rule="additive", server=address, transport=transport, lr=lr
    )
    try:
        assert opt.transport == transport
        # Edits after the optimizer exists, each through another door:
        m.load_state_dict(net(seed=7, width=8).state_dict())  # copy_ (version bump)
        mask = (torch.arange(40).reshape(8, 5) % 3 != 0).float()
        m[0].weight.data.mul_(mask)  # a pruning mask through .data: no version bump
        m[0].bias.data = torch.full((8,), 2.0)  # rebinding p.data
        with torch.no_grad():
            m[2].weight.zero_()  # a zeroed layer
        m[2].bias.data.fill_(0.5)  # .data again

        def one_step():
            edited = [p.detach().clone() for p in m.parameters()]
            x, y = batches(1, seed=len(edited))[0]
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            g = [p.grad.clone() for p in m.parameters()]
            opt.step()
            for p, e, gi in zip(m.parameters(), edited, g):
                assert torch.allclose(p, e - lr * gi, rtol=0, atol=1e-6), "stepped from the edited value"
            return edited

        edited = one_step()
        assert all((p - o).abs().max() > 0.01 for p, o in zip(edited, old))  # the edits were real
        assert m[2].weight.abs().max() < 1e-3, "the zeroed layer stays near zero"
        assert (m[0].weight * (1 - mask)).abs().max() < 1e-3, "masked weights stay near zero"
        if transport == "shm":
            i = opt._plane.arena.index["p0.1"]
            assert m[0].bias.data_ptr() == opt._plane.arena.param(i).data_ptr(), (
                "a rebound parameter views the arena again"
            )
        # Edits after a step (the server wrote the values last):
        m[0].weight.data.clamp_(-0.01, 0.01)
        with torch.no_grad():
            m[2].bias.copy_(torch.tensor([3.0, -3.0]))
        one_step()
        assert m[0].weight.abs().max() < 0.01 + 1e-3
        for _ in range(3):
            one_step()
        assert m[2].weight.abs().max() < 1e-2, "still near zero after several small steps"
        # A checkpoint exports the edited values too.
        m[2].bias.data.fill_(-1.0)
        sd = opt.state_dict()
        assert torch.equal(sd["mur"]["values"][3], torch.full((2,), -1.0))
    finally:
        opt.close()


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_load_state_dict_restores_the_models_values_at_once(server_for, transport):
    address = server_for(transport)
    m = net()
    opt = mur.RemoteOptimizer(
        m.parameters(), optimizer="adam", rule="hybrid", server=address, transport=transport, gamma=0.5
    )
    try:
        train(m, opt, 3)
        saved, sd = bits(m), opt.state_dict()
        train(m, opt, 3, seed=2)
        after = bits(m)
        opt.load_state_dict(sd)
        assert same_bits(bits(m), saved), "the parameters hold the checkpoint's values, before any step"
        train(m, opt, 3, seed=2)
        assert same_bits(bits(m), after), "and the optimizer state came back with them"
    finally:
        opt.close()


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_odd_shapes_and_fixed_parameters(server_for, transport):
    address = server_for(transport)
    empty, w, s = (
        torch.nn.Parameter(torch.zeros(0, 3)),
        torch.nn.Parameter(torch.ones(3)),
        torch.nn.Parameter(torch.tensor(2.0)),
    )
    opt = mur.RemoteOptimizer(
        [empty, w, s], optimizer="sgd", rule="additive", server=address, transport=transport, lr=0.1
    )
    try:
        assert opt.transport == transport
        for _ in range(2):
            opt.zero_grad()
            (w.sum() * s + empty.sum()).backward()
            opt.step()
        assert torch.allclose(w, torch.full((3,), 0.63)) and abs(s.item() - 1.46) < 1e-6 and empty.shape == (0, 3)
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.zeros(0))]})
        assert len(opt.param_groups) == 2  # it joins the session (tests/test_param_groups.py)
    finally:
        opt.close()


# -- a server without shared memory --------------------------------------------------
def test_shm_is_refused_clearly_by_a_tfjs_engine_and_auto_falls_back(wasm_server):
    m = net()
    with pytest.raises(mur.TransportUnavailable, match=r"shm transport unavailable: .*'wasm'.*native") as e:
        mur.RemoteOptimizer(m.parameters(), optimizer="adam", rule="hybrid", server=wasm_server, transport="shm")
    assert isinstance(e.value, mur.MurError) and isinstance(e.value, RuntimeError) and "wasm" in e.value.reason
    a, b = net(), net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid", server=wasm_server, gamma=0.5)
    try:
        assert opt.transport == "grpc" and opt._plane.name == "grpc"
        train(a, opt, 5)
        train(b, reference.Optimizer(b.parameters(), optimizer="adam", rule="hybrid", gamma=0.5), 5)
        assert max_diff(a, b) < 1e-5
    finally:
        opt.close()


def test_arguments_are_checked_before_anything_starts(monkeypatch):
    def no_server(*a, **k):
        raise AssertionError("a server was started before the arguments were checked")

    monkeypatch.setattr(mur.optimizer, "LocalServer", no_server)
    params = net().parameters
    with pytest.raises(ValueError, match=r"transport='udp': must be one of 'auto', 'shm', 'tcp', 'grpc'"):
        mur.RemoteOptimizer(params(), transport="udp")
    with pytest.raises(ValueError, match=r"wire_dtype='fp16': must be one of 'float32', 'bfloat16'"):
        mur.RemoteOptimizer(params(), wire_dtype="fp16")
    with pytest.raises(ValueError, match=r"wire_dtype=torch.bfloat16"):
        mur.RemoteOptimizer(params(), wire_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"timeout=0"):
        mur.RemoteOptimizer(params(), timeout=0)


# -- bfloat16 gradients --------------------------------------------------------------
def test_bfloat16_gradients_equal_a_float32_run_on_rounded_gradients(server):
    def round_bf16(model):
        for p in model.parameters():
            p.grad = p.grad.to(torch.bfloat16).float()

    h = dict(optimizer="adam", rule="hybrid", server=server, transport="grpc", lr=0.01, gamma=0.5)
    runs = {}
    for name, kw in [
        ("bf16", dict(wire_dtype="bfloat16")),
        ("bf16-stream", dict(wire_dtype="bfloat16")),
        ("f32-rounded", {}),
        ("f32", {}),
    ]:
        m = net(width=40)
        opt = mur.RemoteOptimizer(m.parameters(), **h, **kw)
        try:
            sent = []
            if name == "bf16-stream":  # the chunked StepStream path, several chunks per tensor
                opt._caps.max_message_bytes = 256
                opt._caps.chunk_bytes = 64
                real = opt._conn.stub.StepStream

                def stream(frames, real=real, sent=sent, **k):
                    def spy():
                        for f in frames:
                            if f.HasField("grad"):
                                sent.append(f.grad)
                            yield f

                    return real(spy(), **k)

                opt._conn.stub.StepStream = stream
            elif name == "bf16":
                real = opt._conn.raw_step  # the client sends pre-encoded requests: parse them as the server would

                def step(req, real=real, sent=sent, **k):
                    sent.extend(pb.StepRequest.FromString(req).grads)
                    return real(req, **k)

                opt._conn.raw_step = step
            train(m, opt, 10, grad_hook=round_bf16 if name == "f32-rounded" else None)
            runs[name] = m
        finally:
            opt.close()
        if name == "bf16":
            assert sent and all(g.grad.dtype == pb.DTYPE_BFLOAT16 for g in sent)
            assert all(len(g.grad.data) == 2 * torch.Size(g.grad.shape).numel() for g in sent)
        if name == "bf16-stream":
            assert sent and all(c.dtype == pb.DTYPE_BFLOAT16 and len(c.data) <= 64 for c in sent)
            assert any(c.offset > 0 for c in sent), "tensors were cut into chunks (offsets in elements)"
            at = {}
            for c in sent:  # in order, offsets and totals in elements, 2 bytes each
                assert c.offset == (at.get(c.param_id, 0) if c.offset else 0)
                at[c.param_id] = c.offset + len(c.data) // 2
                assert at[c.param_id] <= c.total_elements
    assert same_bits(runs["bf16"], runs["f32-rounded"])
    assert same_bits(runs["bf16-stream"], runs["f32-rounded"])
    assert not same_bits(runs["f32"], runs["f32-rounded"]), "bfloat16 did round the gradients"


@needs_native
def test_wire_dtype_is_ignored_on_shm(native_server):
    a, b = net(), net()
    oa = mur.RemoteOptimizer(a.parameters(), server=native_server, transport="shm", wire_dtype="bfloat16", lr=0.01)
    ob = mur.RemoteOptimizer(b.parameters(), server=native_server, transport="shm", lr=0.01)
    try:
        train(a, oa, 5)
        train(b, ob, 5)
        assert same_bits(a, b)
    finally:
        oa.close()
        ob.close()


# -- bad input -----------------------------------------------------------------------
@needs_native
def test_a_nan_gradient_on_shm_is_refused_and_changes_nothing(native_server):
    m = net()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="adam", rule="hybrid", server=native_server, transport="shm")
    try:
        train(m, opt, 2)
        before = bits(m)
        x, y = batches(1, seed=5)[0]
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        m[0].weight.grad[1, 2] = float("nan")
        with pytest.raises(mur.InvalidArgumentError, match="must be finite"):
            opt.step()
        assert same_bits(bits(m), before), "a refused step writes nothing"
        train(m, opt, 1)  # and the session goes on
        assert not same_bits(bits(m), before)
    finally:
        opt.close()


# -- the arena itself ------------------------------------------------------------------
@needs_native
def test_arena_open_checks_everything_and_close_is_safe(native_server):
    m = net()
    opt = mur.RemoteOptimizer(m.parameters(), server=native_server, transport="shm")
    try:
        info = opt._conn.stub.OpenArena(
            pb.OpenArenaRequest(session_id=opt.session_id),  # the same arena again
            metadata=opt._conn.metadata(),
        )
        assert info.path == opt._plane.arena.path and info.path.startswith("/proc/")

        def variant(**kw):
            v = pb.ArenaInfo()
            v.CopyFrom(info)
            for k, val in kw.items():
                setattr(v, k, val)
            return v

        with pytest.raises(mur.TransportUnavailable, match=r"cannot open the arena .*No such file or directory"):
            Arena.open(variant(path="/proc/self/fd/987654"))
        with pytest.raises(mur.TransportUnavailable, match=r"token mismatch.*another host or in another pid namespace"):
            Arena.open(variant(token=bytes(32)))
        with pytest.raises(mur.TransportUnavailable, match="not a regular file"):
            Arena.open(variant(path="/dev/null"))
        with pytest.raises(mur.TransportUnavailable, match=f"is {info.bytes} bytes, the server's arena is"):
            Arena.open(variant(bytes=info.bytes + 4096))
        bad = variant()
        bad.tensors[0].grad_offset = info.bytes - 4
        with pytest.raises(mur.TransportUnavailable, match=r"bad arena layout.*grad_offset"):
            Arena.open(bad)
        with pytest.raises(mur.TransportUnavailable, match="token of 3 bytes"):
            Arena.open(variant(token=b"abc"))

        second = Arena.open(info)  # a second mapping of the same memory
        p = m[0].weight
        view = second.param(second.index["p0.0"])
        assert torch.equal(view, p.detach().reshape(-1))
        with torch.no_grad():
            p[0, 0] = 42.0
        assert view[0].item() == 42.0, "one memory, two mappings"
        second.close()
        assert second.closed
        assert view[0].item() == 42.0, "a view kept by the caller keeps its mapping alive (no crash)"
        del view
    finally:
        opt.close()


# -- server="auto" ---------------------------------------------------------------------
def test_local_server_uses_a_private_unix_socket():
    s = mur.LocalServer()
    try:
        assert s.address == f"unix:{s.socket}"
        d = os.path.dirname(s.socket)
        assert os.stat(d).st_mode & 0o777 == 0o700
        assert Path(s.socket).is_socket()
        assert s.proc.poll() is None
    finally:
        s.stop()
    assert s.proc.poll() is not None
    assert not os.path.exists(d), "stop() removed the directory"
    s.stop()  # idempotent


@needs_native
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_a_killed_client_takes_its_server_with_it():
    before = set(os.listdir("/dev/shm"))
    child_code = textwrap.dedent("""
        import json, sys, torch, mur
        m = torch.nn.Linear(4, 3)
        opt = mur.RemoteOptimizer(m.parameters(), optimizer="sgd", rule="additive", lr=0.1)
        m(torch.randn(2, 4)).sum().backward()
        opt.step()
        print(json.dumps({"transport": opt.transport, "pid": opt._local.proc.pid,
                          "arena": opt._plane.arena.path, "socket": opt._local.socket}), flush=True)
        sys.stdin.read()  # until killed
    """)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "python-runner"), os.environ.get("PYTHONPATH", "")]),
        "MUR_SERVER_BACKEND": "native",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", child_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    info = None
    try:
        try:
            info = json.loads(read_line(child.stdout, 60, "client"))
        except AssertionError:
            stop_proc(child)
            raise AssertionError(child.stderr.read().decode()[-3000:]) from None
        assert info["transport"] == "shm"
        assert os.path.exists(info["arena"])
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        wait_until(lambda: exited(info["pid"]), 20, "the server exits after its client was killed")
        assert not os.path.exists(info["arena"]), "the arena is gone with the server"
        assert not os.path.exists(info["socket"]), "the server removed its socket"
        assert set(os.listdir("/dev/shm")) <= before, "nothing was left in /dev/shm"
    finally:
        stop_proc(child)
        if info:
            if not exited(info["pid"]):
                os.kill(info["pid"], signal.SIGKILL)
            # The client could not remove its (now empty) private directory.
            shutil.rmtree(os.path.dirname(info["socket"]), ignore_errors=True)


@needs_native
def test_a_killed_server_fails_the_next_step_fast_and_a_new_one_works(scratch):
    d = scratch
    sock = Path(d) / "s.sock"
    procs, opts = [], []
    try:
        procs.append(start_cli(sock, "--backend", "native"))
        m = net()
        opt = mur.RemoteOptimizer(
            m.parameters(),
            optimizer="sgd",
            rule="additive",
            server=f"unix:{sock}",
            transport="shm",
            timeout=30,
            lr=0.1,
            reconnect_timeout=2,
        )
        opts.append(opt)
        train(m, opt, 2)
        before = bits(m)
        procs[0].kill()
        procs[0].wait(timeout=30)
        t0 = time.monotonic()
        with pytest.raises(mur.MurError) as e:
            train(m, opt, 1)
        assert isinstance(e.value, mur.ConnectionLostError), repr(e.value)
        assert time.monotonic() - t0 < 10, "failed fast, not at the deadline"
        assert same_bits(bits(m), before), "the parameters (the client's own mapping) are still readable"
        m(batches(1)[0][0]).sum()  # and usable
        # A new server on the same path. The killed one could not remove its
        # socket file, and the server does not replace a stale one (EADDRINUSE):
        # remove it as a supervisor would.
        if sock.exists():
            sock.unlink()
        procs.append(start_cli(sock, "--backend", "native"))
        a, b = net(seed=3), net(seed=3)
        opt2 = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid", server=f"unix:{sock}", gamma=0.5)
        opts.append(opt2)
        assert opt2.transport == "shm"
        train(a, opt2, 3)
        train(b, reference.Optimizer(b.parameters(), optimizer="adam", rule="hybrid", gamma=0.5), 3)
        assert max_diff(a, b) < 1e-5
        t0 = time.monotonic()
        opt.close()  # its session died with the old server: close() still returns promptly
        assert time.monotonic() - t0 < 10
        assert same_bits(bits(m), before)
    finally:
        for o in opts:
            o.close()
        for p in procs:
            stop_proc(p)


@needs_native
def test_a_hung_server_fails_the_step_at_the_deadline(scratch):
    d = scratch
    sock = Path(d) / "s.sock"
    proc = start_cli(sock, "--backend", "native")
    opt = None
    try:
        m = net()
        opt = mur.RemoteOptimizer(
            m.parameters(), optimizer="sgd", rule="additive", server=f"unix:{sock}", timeout=1.0, lr=0.1
        )
        train(m, opt, 1)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            wait_stopped(proc.pid)
            t0 = time.monotonic()
            with pytest.raises(mur.DeadlineExceededError):
                train(m, opt, 1)
            assert time.monotonic() - t0 < 5
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        if opt:
            opt.close()
        stop_proc(proc)


# -- the fast lane: steps rung through shared memory ------------------------------


def test_fast_lane_steps_equal_rpc_steps_bit_for_bit_and_hand_over_cleanly():
    """Most shm steps take the lane (no RPC); a scheduler's change, a NaN and a
    checkpoint go through the session, and the trajectory equals the gRPC
    transport's bit for bit."""
    runs = {}
    for transport in ("shm", "grpc"):
        model = net(3, width=8)
        opt = mur.RemoteOptimizer(
            model.parameters(), optimizer="adam", rule="hybrid", lr=0.01, lr_out=0.01, gamma=0.5, transport=transport
        )
        try:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
            for k, (x, y) in enumerate(batches(30, seed=4)):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                sched.step()
                if k == 14:
                    # A refused step (NaN) leaves everything as it was, whichever way it was rung.
                    before = bits(model)
                    first = next(model.parameters())
                    saved = first.grad.clone()
                    first.grad[0, 0] = float("nan")
                    with pytest.raises(mur.InvalidArgumentError, match="NaN"):
                        opt.step()
                    assert same_bits(bits(model), before)
                    first.grad.copy_(saved)
                if k == 20:
                    sd = opt.state_dict()  # the server's state mid-lane: step counts included
            runs[transport] = (bits(model), opt.lane_steps, sd)
        finally:
            opt.close()
    shm_bits, lane_steps, sd_shm = runs["shm"]
    grpc_bits, grpc_lane_steps, sd_grpc = runs["grpc"]
    assert same_bits(shm_bits, grpc_bits)
    assert grpc_lane_steps == 0
    # The first step and the three learning-rate changes (every 10 steps) go by RPC.
    assert lane_steps >= 20, lane_steps
    assert sd_shm["mur"]["step"] == sd_grpc["mur"]["step"]
    assert [float(s["step"]) for s in sd_shm["state"].values()] == [float(s["step"]) for s in sd_grpc["state"].values()]


def test_a_step_announced_but_not_rung_changes_nothing(monkeypatch):
    """step() tells the lane a step is coming before it prepares it
    (Lane.prewake: a sleeping lane wakes and polls for the ring). Announcements
    with no step after them (several in a row; a step the client refuses after
    announcing it) leave the lane as it was: the steps after them take the lane
    and the trajectory equals the gRPC transport's bit for bit."""
    monkeypatch.setattr(shm_plane, "_CORES", 1 << 10)  # announce whatever torch's thread count
    runs = {}
    for transport in ("shm", "grpc"):
        model = net(6, width=8)
        opt = mur.RemoteOptimizer(model.parameters(), optimizer="adamw", lr=0.01, transport=transport)
        try:
            for k, (x, y) in enumerate(batches(12, seed=5)):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                lane = opt._plane.arena.lane if transport == "shm" else None
                for _ in range(k % 3):
                    if lane is not None:
                        lane.prewake()

                def refused(number):
                    raise ValueError("refused by the client, after step() announced the step")

                opt._prepare_step = refused
                with pytest.raises(ValueError, match="after step"):
                    opt.step()
                del opt._prepare_step
                opt.step()
            runs[transport] = (bits(model), opt.lane_steps)
        finally:
            opt.close()
    assert same_bits(runs["shm"][0], runs["grpc"][0])
    assert runs["shm"][1] >= 10, runs["shm"][1]  # the first step goes by RPC; the lane takes the rest


# -- a durable server killed during training -----------------------------------------


@contextlib.contextmanager
def durable_run(transport, reconnect_timeout):
    """A server on a --state-dir (restart it with restart()), a mur Adam on it
    and torch's beside it from the same weights; everything freed at the end."""
    d = tempfile.mkdtemp(prefix="mur-test-")
    sock, state = Path(d) / "s.sock", Path(d) / "state"
    procs = []

    def restart():
        stop_proc(procs[-1])
        procs.append(start_cli(sock, "--state-dir", str(state)))

    a, b = net(5, width=16), net(5, width=16)
    opt = None
    try:
        procs.append(start_cli(sock, "--state-dir", str(state)))
        opt = mur.RemoteOptimizer(
            a.parameters(),
            optimizer="adam",
            rule="additive",
            lr=0.01,
            server=f"unix:{sock}",
            transport=transport,
            reconnect_timeout=reconnect_timeout,
        )
        yield a, b, opt, torch.optim.Adam(b.parameters(), lr=0.01), restart, procs, (sock, state)
    finally:
        if opt is not None:
            opt.close()
        for p in procs:
            stop_proc(p)
        shutil.rmtree(d, ignore_errors=True)


@needs_native
@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_training_rides_through_server_kills_on_a_state_dir(transport):
    """SIGKILL the server at several moments of a training run and restart it
    on the same --state-dir: the client reconnects by itself, resends its step
    with the same number, and the result equals an uninterrupted run (and
    torch.optim) to 1e-5: no step lost or applied twice."""
    kills = {3, 9, 10, 17, 25}
    with durable_run(transport, 30) as (a, b, opt, ref, restart, _, _):
        assert opt.transport == transport
        for k, (x, y) in enumerate(batches(30, seed=7)):
            for model, o in ((a, opt), (b, ref)):
                o.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
            if k in kills:
                # Killed between the gradient and the step: the step meets a dead
                # server, and a new one comes up while the client retries.
                restart()
            opt.step()
            ref.step()
        assert max_diff(a, b) < 1e-5


@needs_native
@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_a_step_in_flight_rides_through_a_restart_with_capped_backoff(transport):
    """The server is killed, a step starts against the dead server and keeps
    retrying; a new server comes up on the same --state-dir. The step is
    applied once, and no wait between retries is longer than the cap
    (connection.BACKOFF_CAP, x1.5 jitter), which is what bounds the time from
    "listening" to the step's completion (printed, not asserted)."""
    import threading

    from mur import connection

    waits, times, retrying = [], [], threading.Event()

    def sleep(s):
        waits.append(s)
        times.append(time.monotonic())
        retrying.set()
        time.sleep(s)

    with durable_run(transport, 60) as (a, b, opt, ref, _, procs, (sock, state)):
        opt._conn.sleep = sleep
        train(a, opt, 2)
        train(b, ref, 2)
        x, y = batches(1, seed=9)[0]
        for model, o in ((a, opt), (b, ref)):
            o.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
        stop_proc(procs[-1])
        step = threading.Thread(target=opt.step)
        step.start()
        assert retrying.wait(60), "the step met the dead server and retries"
        procs.append(start_cli(sock, "--state-dir", str(state)))
        listening = time.monotonic()
        step.join(60)
        assert not step.is_alive()
        done = time.monotonic()
        after = [t for t in times if t > listening]
        print(
            f"{transport}: listening -> step done {done - listening:.3f} s ({len(after)} retries after it, the "
            f"last at +{(after[-1] - listening) if after else 0:.3f} s); {len(waits)} waits, longest {max(waits):.3f} s"
        )
        ref.step()
        assert max(waits) <= connection.BACKOFF_CAP * 1.5
        assert max_diff(a, b) < 1e-5, "applied once"


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_an_unexpected_replay_is_raised_not_taken_silently(transport):
    """A first attempt answered "replayed" means another writer used this
    step number: the client raises instead of taking a result that is not its."""
    m = net()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="sgd", rule="additive", lr=0.1, transport=transport)
    try:
        train(m, opt, 2)
        before = bits(m)
        opt._step_no -= 1  # as if another process had stepped with our next number
        with pytest.raises(mur.MurError, match="already been applied"):
            opt.step()
        assert same_bits(bits(m), before)
    finally:
        opt.close()


@needs_native
def test_fast_lane_steps_are_counted_in_the_metrics(scratch):
    """Fast-lane steps make no call; a scrape takes them in and counts them as shm ok."""
    import urllib.request

    d = scratch
    sock = Path(d) / "s.sock"
    proc = subprocess.Popen(
        ["node", str(CLI), "--socket", str(sock), "--exit-with-stdin", "--metrics-port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    opt = None
    try:
        info = json.loads(read_line(proc.stdout, 60, "mur server"))
        m = net()
        opt = mur.RemoteOptimizer(m.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=f"unix:{sock}")
        train(m, opt, 12)
        assert opt.lane_steps >= 10

        def shm_ok():
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{info['metrics_port']}/metrics", timeout=10).read().decode()
            )
            line = next(ln for ln in text.splitlines() if ln.startswith('mur_steps_total{transport="shm",result="ok"}'))
            return float(line.split()[-1])

        assert shm_ok() == 12  # 1 first step by RPC (it creates the slots) + the lane's
        train(m, opt, 3)
        assert shm_ok() == 15
    finally:
        if opt:
            opt.close()
        stop_proc(proc)
