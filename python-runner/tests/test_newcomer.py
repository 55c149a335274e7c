"""What a newcomer hit in the first hour (issue 19): each fixed and held here."""

import copy
import io
import json
import os
import pickle
import select
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, batches, max_diff, net, start_tcp, stop

import mur
from mur import connection


def train(model, opt, steps):
    for x, y in batches(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_a_schedulers_state_dict_saves_and_the_optimizer_still_refuses_pickling(server):
    m = net()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01)
    try:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
        buf = io.BytesIO()
        torch.save(sched.state_dict(), buf)  # torch 1.13: holds a bound method of the scheduler
        buf.seek(0)
        sched.load_state_dict(torch.load(buf))
        for f in (copy.deepcopy, copy.copy, pickle.dumps):
            with pytest.raises(TypeError, match="live server session"):
                f(opt)
    finally:
        opt.close()


def test_state_is_exported_once_per_step(server):
    m = net()
    opt = mur.RemoteOptimizer(
        m.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01, transport="grpc"
    )
    calls, real = [], opt._session.export
    opt._session.export = lambda: calls.append(1) or real()
    try:
        train(m, opt, 1)
        for p in m.parameters():
            assert float(opt.state[p]["step"]) == 1.0
        assert len(calls) == 1, "one ExportState for every parameter's state"
        train(m, opt, 1)
        assert all(float(opt.state[p]["step"]) == 2.0 for p in m.parameters()), "a step refreshes it"
        assert len(calls) == 2
    finally:
        opt.close()


def test_state_dict_is_at_most_one_and_a_half_torchs_and_loads_into_torch(server):
    a, b = net(width=64), net(width=64)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01)
    ref = torch.optim.Adam(b.parameters(), lr=0.01)
    try:
        train(a, opt, 2)
        train(b, ref, 2)
        sizes = []
        for o in (opt, ref):
            buf = io.BytesIO()
            torch.save(o.state_dict(), buf)
            sizes.append(buf.tell())
        print(f"state_dict under torch.save: mur {sizes[0]} bytes, torch.optim {sizes[1]} bytes")
        assert sizes[0] <= 1.5 * sizes[1]
        c = net(width=64)
        torch.optim.Adam(c.parameters(), lr=0.01).load_state_dict(opt.state_dict())
    finally:
        opt.close()


def test_a_killed_auto_client_leaves_no_directory():
    code = (
        "import mur, torch, sys\n"
        "opt = mur.RemoteOptimizer(torch.nn.Linear(2, 2).parameters(), optimizer='sgd', rule='additive', lr=0.1)\n"
        "print(opt._local.proc.pid, opt._local.socket, flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "python-runner"), "MUR_LOG": "silent"},
    )
    try:
        pid, sock = child.stdout.readline().decode().split()
        server_pid, made = int(pid), os.path.dirname(sock)
        assert os.path.basename(made).startswith("mur-") and os.path.isdir(made), "the client's private directory"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # The server exits when its stdin (the killed client's pipe) closes:
        # wait for its exit on a pidfd (it is not our child).
        try:
            fd = os.pidfd_open(server_pid)
        except ProcessLookupError:
            fd = None  # gone already
        if fd is not None:
            try:
                assert select.select([fd], [], [], 60)[0], "the server outlived its client by a minute"
            finally:
                os.close(fd)
        assert not os.path.exists(made), f"left behind: {made}"
    finally:
        if child.poll() is None:
            child.kill()
        child.stdin.close()
        child.stdout.close()


def test_import_mur_does_not_import_dynamo():
    code = (
        "import time, sys; t = time.perf_counter(); import torch; t1 = time.perf_counter(); import mur; "
        "t2 = time.perf_counter(); import json; "
        "print(json.dumps({'torch': t1 - t, 'mur': t2 - t1, 'dynamo': 'torch._dynamo' in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "python-runner")},
    )
    r = json.loads(out.stdout)
    print(f"import torch {r['torch']:.3f} s, then import mur {r['mur']:.3f} s")
    assert not r["dynamo"]


def test_arguments_are_checked_before_a_server_starts(monkeypatch):
    def no_server(*a, **k):
        raise AssertionError("a server was started before the arguments were checked")

    monkeypatch.setattr(mur.optimizer, "LocalServer", no_server)
    params = net().parameters
    with pytest.raises(ValueError, match="lr=None"):
        mur.RemoteOptimizer(params(), optimizer="adam", lr=None)
    with pytest.raises(ValueError, match="optimizer='adamm'"):
        mur.RemoteOptimizer(params(), optimizer="adamm")
    with pytest.raises(ValueError, match="betaz"):
        mur.RemoteOptimizer(params(), optimizer="adam", betaz=(0.9, 0.99))
    with pytest.raises(ValueError, match="no port"):
        mur.RemoteOptimizer(params(), server="localhost")
    with pytest.raises(ValueError, match="transport"):
        mur.RemoteOptimizer(params(), transport="carrier-pigeon")


def test_a_server_never_reached_is_not_a_lost_connection():
    with pytest.raises(mur.ServerUnreachableError, match="cannot reach a mur server") as e:
        mur.RemoteOptimizer(net().parameters(), server="127.0.0.1:1", timeout=10)
    assert not isinstance(e.value, mur.ConnectionLostError)


def test_errors_name_parameters_as_the_model_does(server):
    m = net()
    opt = mur.RemoteOptimizer(
        m.named_parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1, transport="grpc"
    )
    try:
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        m[2].bias.grad[0] = float("nan")
        with pytest.raises(mur.InvalidArgumentError, match=r"'2\.bias'"):
            opt.step()
    finally:
        opt.close()


def test_session_id_is_public_and_the_token_is_not(server):
    opt = mur.RemoteOptimizer(net().parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1)
    sid = opt.session_id
    assert isinstance(sid, str) and sid
    assert not any("token" in k for k in vars(opt)), "the token lives in the connection, not on the optimizer"
    opt.close()
    assert opt.session_id is None


def test_the_backoff_is_capped_so_a_restarted_server_is_found_within_a_second():
    """The schedule, counted with an injected clock: from the first retry on,
    no wait exceeds BACKOFF_CAP x 1.5, so a server listening again is tried
    within that (plus grpc's own reconnect backoff, capped the same)."""
    now, waits = [0.0], []

    def sleep(s):
        waits.append(s)
        now[0] += s

    conn = connection.Connection("127.0.0.1:1", reconnect_timeout=60.0, clock=lambda: now[0], sleep=sleep)
    try:

        def lost():
            raise mur.ConnectionLostError("lost", None)

        with pytest.raises(mur.ConnectionLostError):
            conn.retrying(lost)
    finally:
        conn.close()
    assert max(waits) <= connection.BACKOFF_CAP * 1.5
    assert waits[0] <= connection.BACKOFF * 1.5
    assert 60.0 <= sum(waits) <= 60.0 + 1e-9, "retried for reconnect_timeout, not longer"
    assert len(waits) >= 60.0 / (connection.BACKOFF_CAP * 1.5)
    assert dict(connection.CHANNEL_OPTIONS)["grpc.max_reconnect_backoff_ms"] <= 1000 * connection.BACKOFF_CAP


def test_a_servers_config_applies_to_a_client_that_names_no_optimizer(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"optimizer": "sgd", "rule": "additive", "defaults": {"lr": 0.25, "momentum": 0.5}}))
    proc, info = start_tcp("--config", spec)
    try:
        a, b = net(), net()
        opt = mur.RemoteOptimizer(a.parameters(), server=f"127.0.0.1:{info['port']}", transport="grpc")
        try:
            assert (opt.optimizer_name, opt.rule_name) == ("sgd", "additive")
            assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["momentum"] == 0.5
            train(a, opt, 3)
            train(b, torch.optim.SGD(b.parameters(), lr=0.25, momentum=0.5), 3)
            assert max_diff(a, b) < 1e-6  # float32 on both sides, 3 steps of a small model
        finally:
            opt.close()
        # The client's own arguments still win over the server's defaults.
        opt = mur.RemoteOptimizer(net().parameters(), server=f"127.0.0.1:{info['port']}", transport="grpc", lr=0.1)
        assert opt.optimizer_name == "sgd" and opt.param_groups[0]["lr"] == 0.1
        opt.close()
    finally:
        stop(proc)


def test_without_a_config_the_default_is_adam_hybrid(tmp_path):
    proc, info = start_tcp()
    try:
        opt = mur.RemoteOptimizer(net().parameters(), server=f"127.0.0.1:{info['port']}", transport="grpc")
        assert (opt.optimizer_name, opt.rule_name) == ("adam", "hybrid")
        opt.close()
    finally:
        stop(proc)
