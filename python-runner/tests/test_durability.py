"""A server on --state-dir whose files fail their checks, or whose disk is
full: the client raises typed errors (mur.DataLossError, never retried, saying
how to resume; mur.StorageFullError / StorageIOError for the disk), and
resuming from a checkpoint as the message says gives the same run as
torch.optim. Refused step numbers are kept in the journal, so a restarted
server does not mistake the next one for lost steps."""

from pathlib import Path

import grpc
import pytest
import torch
from conftest import batches, bits, net, same_bits
from test_transport import ADDON, CLI, max_diff, start_cli, stop_proc

import mur
from mur.errors import error_for

pytestmark = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")


def test_statuses_map_to_typed_errors():
    e = error_for(
        grpc.StatusCode.DATA_LOSS, "session 'x': /s/sessions/x/journal: record at byte 40: body checksum mismatch"
    )
    assert isinstance(e, mur.DataLossError) and not isinstance(e, mur.ConnectionLostError)
    assert (
        "journal" in str(e)
        and "opt.load_state_dict(<your last checkpoint>)" in str(e)
        and "new RemoteOptimizer" in str(e)
    )
    full = error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "state dir /s: no space left (ENOSPC) while writing")
    assert isinstance(full, mur.StorageFullError) and isinstance(full, mur.ResourceExhaustedError)
    assert type(error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "memory: ...")) is mur.ResourceExhaustedError
    io = error_for(grpc.StatusCode.UNAVAILABLE, "state dir /s: I/O error (EIO) while writing")
    assert isinstance(io, mur.StorageIOError) and isinstance(io, mur.ConnectionLostError)
    assert type(error_for(grpc.StatusCode.UNAVAILABLE, "connection refused")) is mur.ConnectionLostError


def _journal(state):
    [session] = list((Path(state) / "sessions").iterdir())
    return session / "journal"


@pytest.mark.parametrize(
    "transport",
    [
        "grpc",
        "tcp",
        pytest.param(
            "shm",
            marks=pytest.mark.skipif(
                not ADDON.exists(), reason="the shm transport needs the native engine (make native-engine)"
            ),
        ),
    ],
)
def test_damaged_state_raises_data_loss_and_a_checkpoint_resumes(transport, scratch):
    d = scratch
    sock, state = Path(d) / "s.sock", Path(d) / "state"
    if transport == "tcp":
        from conftest import start_tcp

        proc, info = start_tcp("--state-dir", str(state))
        address = f"127.0.0.1:{info['port']}"
    else:
        proc, address = start_cli(sock, "--state-dir", str(state)), f"unix:{sock}"
    procs = [proc]
    a = net(3, width=8)
    opt = mur.RemoteOptimizer(
        a.parameters(),
        optimizer="adam",
        rule="additive",
        lr=0.01,
        server=address,
        transport=transport,
        reconnect_timeout=30,
    )
    data = list(batches(8, seed=3))

    def one(model, o, x, y):
        o.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        o.step()

    try:
        assert opt.transport == transport
        for x, y in data[:3]:
            one(a, opt, x, y)
        checkpoint = {"model": {k: v.clone() for k, v in a.state_dict().items()}, "opt": opt.state_dict()}
        for x, y in data[3:5]:
            one(a, opt, x, y)
        stop_proc(procs[-1])
        j = _journal(state)
        buf = bytearray(j.read_bytes())
        buf[len(buf) // 2] ^= 0x04
        j.write_bytes(bytes(buf))
        if transport == "tcp":
            procs.append(start_tcp("--state-dir", str(state), port=info["port"])[0])
        else:
            procs.append(start_cli(sock, "--state-dir", str(state)))
        x, y = data[5]
        opt.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        before = bits(a)
        with pytest.raises(mur.DataLossError, match=r"journal.*checksum mismatch.*load_state_dict") as e:
            opt.step()
        assert e.value.code == grpc.StatusCode.DATA_LOSS
        assert same_bits(bits(a), before)
        opt.close()
        # Resume as the message says: the model and a new RemoteOptimizer from the last checkpoint, steps 4.. again.
        a2 = net(3, width=8)
        a2.load_state_dict(checkpoint["model"])
        opt = mur.RemoteOptimizer(
            a2.parameters(), optimizer="adam", rule="additive", lr=0.01, server=address, transport=transport
        )
        opt.load_state_dict(checkpoint["opt"])
        for x, y in data[3:]:
            one(a2, opt, x, y)
        b = net(3, width=8)  # the same run, uninterrupted, on torch.optim
        ref = torch.optim.Adam(b.parameters(), lr=0.01)
        for x, y in data:
            one(b, ref, x, y)
        assert max_diff(a2, b) < 1e-5
    finally:
        opt.close()
        for p in procs:
            stop_proc(p)


def test_refused_step_numbers_are_kept_across_a_restart(scratch):
    """A refused step uses up its number (the next step() sends the one after);
    after a restart the server refuses a step numbered past the next one it
    expects (acknowledged steps lost), so it keeps the refused numbers in its
    journal: refusals before and after a restart do not read as lost steps."""
    d = scratch
    sock, state = Path(d) / "s.sock", Path(d) / "state"
    procs = [start_cli(sock, "--state-dir", str(state))]
    m = net(4, width=8)
    opt = mur.RemoteOptimizer(
        m.parameters(),
        optimizer="sgd",
        rule="additive",
        lr=0.1,
        server=f"unix:{sock}",
        transport="grpc",
        reconnect_timeout=30,
    )
    data = list(batches(4, seed=5))

    def step(k, nan=False):
        x, y = data[k % len(data)]
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        if nan:
            next(m.parameters()).grad[0, 0] = float("nan")
            with pytest.raises(mur.InvalidArgumentError, match="finite"):
                opt.step()
        else:
            opt.step()

    try:
        step(0)
        step(1)
        step(2, nan=True)  # number 3, refused
        stop_proc(procs[-1])
        procs.append(start_cli(sock, "--state-dir", str(state)))
        step(3, nan=True)  # number 4, refused by the restarted server
        stop_proc(procs[-1])
        procs.append(start_cli(sock, "--state-dir", str(state)))
        step(0)  # number 5: taken, not DATA_LOSS
        assert opt._step_no == 5
    finally:
        opt.close()
        for p in procs:
            stop_proc(p)
