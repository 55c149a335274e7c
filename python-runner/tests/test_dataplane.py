"""The tcp transport (mur/planes/tcp.py, proto DataStepHeader): tensor bytes on
a plain TCP connection to the server's data port, gRPC for the rest. It must
keep every guarantee of the grpc transport: the same trajectory bit for bit,
edits between steps kept, refused steps changing nothing, retries exact
through a server restart."""

import socket
from pathlib import Path

import pytest
import torch
from conftest import batches, bits, net, same_bits, start_tcp, stop

import mur


@pytest.fixture(scope="module")
def tcp_server():
    proc, info = start_tcp()
    assert info["data_port"] > 0
    yield f"127.0.0.1:{info['port']}"
    stop(proc)


def backward(model, x, y):
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


def run(address, transport, steps=12, edit_at=None, **kw):
    """Adam/hybrid over `address` on `transport`; the final parameters' bits."""
    model = net()
    opt = mur.RemoteOptimizer(
        model.parameters(),
        optimizer="adam",
        rule="hybrid",
        lr=0.01,
        lr_out=0.01,
        gamma=0.5,
        server=address,
        transport=transport,
        timeout=30,
        **kw,
    )
    try:
        assert opt.transport == transport
        for k, (x, y) in enumerate(batches(steps)):
            if k == edit_at:
                with torch.no_grad():
                    model[0].weight.data.mul_(0.5)  # .data: no version bump, found by comparing bits
                    model[2].bias.fill_(0.25)
            backward(model, x, y)
            opt.step()
    finally:
        opt.close()
    return bits(model)


@pytest.mark.parametrize("wire_dtype", ["float32", "bfloat16", "float16"])
def test_tcp_steps_exactly_as_grpc(tcp_server, wire_dtype):
    assert same_bits(run(tcp_server, "tcp", wire_dtype=wire_dtype), run(tcp_server, "grpc", wire_dtype=wire_dtype))


def test_tcp_matches_torch_adam(tcp_server):
    model, ref = net(), net()
    opt = mur.RemoteOptimizer(
        model.parameters(), optimizer="adam", rule="additive", lr=0.01, server=tcp_server, transport="tcp"
    )
    local = torch.optim.Adam(ref.parameters(), lr=0.01)
    try:
        for x, y in batches(20):
            for m, o in ((model, opt), (ref, local)):
                backward(m, x, y)
                o.step()
    finally:
        opt.close()
    # float32 rounding of 20 Adam steps at lr 1e-2 (the server's fused kernel
    # orders operations differently from torch's for-loop Adam).
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), ref.parameters())) < 1e-5


def test_edits_between_steps_are_kept_on_tcp(tcp_server):
    """Weights edited between steps (without a version bump) are what the next step starts from."""
    assert same_bits(run(tcp_server, "tcp", edit_at=5), run(tcp_server, "grpc", edit_at=5))
    assert not same_bits(run(tcp_server, "tcp", edit_at=5), run(tcp_server, "tcp"))


def test_a_refused_step_changes_nothing_and_the_next_one_goes_through(tcp_server):
    model = net()
    opt = mur.RemoteOptimizer(
        model.parameters(), optimizer="adam", rule="additive", lr=0.01, server=tcp_server, transport="tcp"
    )
    try:
        (x, y), (x2, y2) = batches(2)
        backward(model, x, y)
        opt.step()
        before = bits(model)
        backward(model, x2, y2)
        model[0].weight.grad[0, 0] = float("nan")
        with pytest.raises(mur.InvalidArgumentError, match=r"NaN|finite"):
            opt.step()
        assert same_bits(bits(model), before)
        backward(model, x2, y2)
        opt.step()
        assert not same_bits(bits(model), before)
        sd = opt.state_dict()
        assert sd["mur"]["step"] == 3  # the refused number is not reused silently: one more, as on grpc
    finally:
        opt.close()


def test_tcp_needs_a_data_port():
    with pytest.raises(mur.TransportUnavailable, match="tcp transport unavailable"):
        mur.RemoteOptimizer(net().parameters(), optimizer="adam", rule="additive", server="auto", transport="tcp")
    proc, info = start_tcp("--data-port", "off")
    try:
        assert "data_port" not in info
        with pytest.raises(mur.TransportUnavailable, match="no data port"):
            mur.RemoteOptimizer(
                net().parameters(),
                optimizer="adam",
                rule="additive",
                server=f"127.0.0.1:{info['port']}",
                transport="tcp",
            )
        opt = mur.RemoteOptimizer(
            net().parameters(), optimizer="adam", rule="additive", server=f"127.0.0.1:{info['port']}", transport="auto"
        )
        assert opt.transport in ("shm", "grpc")
        opt.close()
    finally:
        stop(proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_rides_through_server_kills_on_a_state_dir(scratch):
    """SIGKILL the server between gradient and step and restart it on the same
    --state-dir and gRPC port (its data port changes): the client finds the new
    data port, resends its step under the same number, and ends equal to
    torch.optim: no step lost or applied twice."""
    d = scratch
    port = free_port()
    procs = [start_tcp("--state-dir", Path(d) / "state", port=port)[0]]
    a, b = net(5, width=16), net(5, width=16)
    opt = mur.RemoteOptimizer(
        a.parameters(),
        optimizer="adam",
        rule="additive",
        lr=0.01,
        server=f"127.0.0.1:{port}",
        transport="tcp",
        reconnect_timeout=30,
    )
    ref = torch.optim.Adam(b.parameters(), lr=0.01)
    try:
        for k, (x, y) in enumerate(batches(20, seed=7)):
            backward(a, x, y)
            backward(b, x, y)
            if k in (3, 4, 11):
                stop(procs[-1])
                procs.append(start_tcp("--state-dir", Path(d) / "state", port=port)[0])
            opt.step()
            ref.step()
        assert opt.transport == "tcp"
        assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-5
    finally:
        opt.close()
        for p in procs:
            stop(p)


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_float16_gradients_are_the_float32_step_on_the_rounded_values(tcp_server, transport):
    """wire_dtype="float16" rounds each gradient to float16 (torch's rounding)
    and the server widens it exactly: the step equals a float32 step on the
    rounded gradients, bit for bit. A gradient beyond float16's range
    (65504) becomes infinite and is refused, changing nothing."""

    def run(wire_dtype, round_first):
        model = net()
        opt = mur.RemoteOptimizer(
            model.parameters(),
            optimizer="adam",
            rule="additive",
            lr=0.01,
            server=tcp_server,
            transport=transport,
            wire_dtype=wire_dtype,
        )
        try:
            for x, y in batches(6):
                backward(model, x, y)
                if round_first:
                    for p in model.parameters():
                        p.grad.copy_(p.grad.to(torch.float16).to(torch.float32))
                opt.step()
            if wire_dtype == "float16":
                before = bits(model)
                model[0].weight.grad[0, 0] = 1e5  # finite in float32, infinite in float16
                with pytest.raises(mur.InvalidArgumentError, match=r"finite|inf"):
                    opt.step()
                assert same_bits(bits(model), before)
        finally:
            opt.close()
        return bits(model)

    assert same_bits(run("float16", False), run("float32", True))
