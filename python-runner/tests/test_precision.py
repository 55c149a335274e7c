"""Parameters that are not float32 (float16, bfloat16, float64): the server
keeps a float32 master copy, gradients are cast to float32 on the way in and
the master is cast back into the parameter after each step, on both
transports; edits of such parameters are still detected and sent."""

from pathlib import Path

import pytest
import torch

import mur

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
pytestmark = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
TRANSPORTS = ["grpc", "shm"]


def net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)


def data(dtype=torch.float32, n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    return x.to(dtype), y.to(dtype)


def masters(opt):
    """The server's float32 copy of every parameter, by the client's parameter (from a checkpoint)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    return {params[i]: v.view(params[i].shape) for i, v in opt.state_dict()["mur"]["values"].items()}


def forward(model, x):
    """The model computed in float32 from its parameters, whatever their dtype
    (torch 1.13 has no float16 matmul on the CPU); gradients come back in each
    parameter's dtype."""
    f = torch.nn.functional
    h = torch.tanh(f.linear(x.float(), model[0].weight.float(), model[0].bias.float()))
    return f.linear(h, model[2].weight.float(), model[2].bias.float())


def remote(model, server_for, transport, **kw):
    opt = mur.RemoteOptimizer(model.parameters(), server=server_for(transport), transport=transport, **kw)
    assert opt.transport == transport
    return opt


def train(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(forward(model, x), y.float())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_trains_and_holds_the_master_cast(server_for, transport, dtype):
    model = net(dtype)
    x, y = data(dtype)
    opt = remote(model, server_for, transport, optimizer="adam", rule="hybrid", lr=1e-2)
    try:
        losses = train(model, opt, x, y, 30)
        assert losses[-1] < 0.7 * losses[0], losses
        assert all(p.dtype == dtype for p in model.parameters()), "parameters keep their dtype"
        m = masters(opt)
        for p in model.parameters():
            assert torch.equal(p.detach(), m[p].to(dtype)), "the parameter is the master copy, cast"
        # The master keeps float32 precision: an unedited parameter is not sent back rounded.
        assert any(not torch.equal(m[p], m[p].to(dtype).float()) for p in model.parameters())
    finally:
        opt.close()
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_float64_parameters_match_torch_optim_to_float32(server_for, transport):
    a, b = net(torch.float64), net(torch.float64)
    x, y = data(torch.float64)
    ta = torch.optim.Adam(a.parameters(), lr=1e-2)
    ob = remote(b, server_for, transport, optimizer="adam", rule="additive", lr=1e-2)
    try:
        train(a, ta, x, y, 20)
        train(b, ob, x, y, 20)
        for p, q in zip(a.parameters(), b.parameters()):
            assert q.dtype == torch.float64
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    finally:
        ob.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_mixed_model_float32_and_bfloat16(server_for, transport):
    model = net()
    model[2].to(torch.bfloat16)
    x, y = data()
    opt = remote(model, server_for, transport, optimizer="adam", rule="additive", lr=1e-2)
    try:
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(forward(model, x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0]
        assert model[0].weight.dtype == torch.float32 and model[2].weight.dtype == torch.bfloat16
        m = masters(opt)
        for p in model.parameters():
            assert torch.equal(p.detach(), m[p].to(p.dtype))
        if transport == "shm":
            assert model[0].weight.data_ptr() == opt._plane.views["p0.0"][1].data_ptr(), "float32: a view of the arena"
    finally:
        opt.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_edits_of_such_parameters_are_what_the_next_step_starts_from(server_for, transport, dtype):
    model = net(dtype)
    x, y = data(dtype)
    opt = remote(model, server_for, transport, optimizer="sgd", rule="additive", lr=0.1)
    try:
        train(model, opt, x, y, 2)
        w = model[0].weight
        with torch.no_grad():
            w.data[0].fill_(0.5)  # through .data: no version bump, found by its bits
            model[2].bias.add_(1.0)
        m = masters(opt)  # a checkpoint syncs the client's edits first
        assert torch.equal(m[w][0], torch.full((8,), 0.5))
        assert torch.equal(m[model[2].bias], model[2].bias.detach().float())
        # SGD: the next step starts from the edit.
        opt.zero_grad()
        torch.nn.functional.mse_loss(forward(model, x), y.float()).backward()
        g = w.grad.detach().float().clone()
        opt.step()
        want = torch.full((8,), 0.5) - 0.1 * g[0]
        # float32 on the server, then one rounding to the parameter's dtype.
        torch.testing.assert_close(w.detach()[0].float(), want, rtol=2 * torch.finfo(dtype).eps, atol=1e-6)
    finally:
        opt.close()
