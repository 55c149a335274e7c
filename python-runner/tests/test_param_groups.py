"""add_param_group after the session exists (fine-tuning: unfreeze a layer
later): the group joins the server session and the run equals torch.optim's
doing the same, on both transports; a group torch or the server refuses raises
and leaves the optimizer usable; checkpoints carry the new group."""

from pathlib import Path

import pytest
import torch
from conftest import net as _net

import mur


def net(seed=0):
    return _net(seed, sizes=(6, 5, 3))


ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
pytestmark = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
TRANSPORTS = ["grpc", "shm"]
HEAD = {"lr": 5e-3, "betas": (0.8, 0.99)}


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def fine_tune(model, make_opt, steps=15, add_at=5):
    """Trains the body; at step `add_at` unfreezes the head and adds its group."""
    body, head = model[0], model[2]
    head.requires_grad_(False)
    opt = make_opt(body.parameters())
    for k, (x, y) in enumerate(batches(steps), start=1):
        if k == add_at:
            head.requires_grad_(True)
            opt.add_param_group({"params": list(head.parameters()), **HEAD})
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt


def remote(server_for, transport, **kw):
    def make(params):
        opt = mur.RemoteOptimizer(
            params, optimizer="adam", rule="additive", lr=1e-2, server=server_for(transport), transport=transport, **kw
        )
        assert opt.transport == transport
        return opt

    return make


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_group_added_at_step_5_trains_as_torch_optim(server_for, transport):
    a, b = net(), net()
    fine_tune(a, lambda params: torch.optim.Adam(params, lr=1e-2))
    before = [p.detach().clone() for p in b[2].parameters()]
    opt = fine_tune(b, remote(server_for, transport))
    try:
        assert opt.transport == transport
        assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == HEAD["lr"]
        assert not torch.equal(b[2].weight, before[0]), "the added group was stepped"
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        if transport == "shm":
            # The new parameters are views of the session's (new) arena, like the old ones.
            assert all(p.data.data_ptr() == opt._plane.views[pid][1].data_ptr() for _, pid, p in opt._params())
        st = opt.state[b[2].weight]
        assert st["step"].item() == 11 and st["exp_avg"].shape == b[2].weight.shape
    finally:
        opt.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_state_dict_carries_the_added_group(server_for, transport):
    a = net()
    opt = fine_tune(a, remote(server_for, transport), steps=8)
    sd = opt.state_dict()
    want = [p.detach().clone() for p in a.parameters()]
    for _ in range(2):  # move away from the checkpoint
        opt.zero_grad()
        torch.nn.functional.mse_loss(a(torch.ones(2, 6)), torch.zeros(2, 3)).backward()
        opt.step()
    opt.close()
    b = net(seed=3)
    fresh = mur.RemoteOptimizer(
        b[0].parameters(), optimizer="adam", rule="additive", lr=1e-2, server=server_for(transport), transport=transport
    )
    try:
        fresh.add_param_group({"params": list(b[2].parameters()), **HEAD})
        fresh.load_state_dict(sd)
        assert len(sd["param_groups"]) == 2 and sd["param_groups"][1]["betas"] == HEAD["betas"]
        for p, q in zip(want, [*b[0].parameters(), *b[2].parameters()]):
            assert torch.equal(p, q.detach())
        assert fresh.state[b[2].bias]["step"].item() == 4
    finally:
        fresh.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bad_group_raises_like_torch_and_the_optimizer_goes_on(server_for, transport):
    a = net()
    opt = remote(server_for, transport)(a[0].parameters())
    try:
        sent = [p.detach().clone() for p in a.parameters()]
        with pytest.raises(ValueError, match="more than one parameter group"):
            opt.add_param_group({"params": [a[0].weight, a[2].weight]})
        with pytest.raises(ValueError, match="betas"):  # mur.InvalidArgumentError: the server's message
            opt.add_param_group({"params": list(a[2].parameters()), "betas": (0.9, 1.5)})
        with pytest.raises(ValueError, match="lr"):
            opt.add_param_group({"params": list(a[2].parameters()), "lr": -1.0})
        with pytest.raises(TypeError, match="lr"):
            opt.add_param_group({"params": list(a[2].parameters()), "lr": "fast"})
        with pytest.raises(TypeError, match="int64"):
            opt.add_param_group({"params": [torch.zeros(3, dtype=torch.int64)]})
        assert len(opt.param_groups) == 1, "a refused group is not kept"
        assert all(torch.equal(p, q) for p, q in zip(sent, a.parameters())), "nothing moved"
        # Usable: the same head, well formed, is added and trained.
        opt.add_param_group({"params": list(a[2].parameters()), **HEAD})
        x, y = batches(1)[0]
        opt.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        opt.step()
        assert not torch.equal(sent[2], a[2].weight.detach())
        assert opt.state[a[2].weight]["step"].item() == 1
    finally:
        opt.close()


def test_a_group_of_another_optimizer_takes_the_constructors_rule_hyperparameters(server):
    """The rule's hyperparameters (gamma, lr_in, lr_out) are the session's: a
    group naming an optimizer of its own gets the constructor's values for
    them, as every torch group gets the constructor's defaults, and steps as
    mur.reference does with them (before, it got the rule's defaults)."""
    from mur import reference

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    a, b = model(), model()
    weights = [p for p in a.parameters() if p.ndim == 2]
    biases = [p for p in a.parameters() if p.ndim != 2]
    opt = mur.RemoteOptimizer(
        [{"params": weights}, {"params": biases, "optimizer": "adam", "lr": 3e-3}],
        optimizer="sgd",
        rule="hybrid",
        server=server,
        lr=0.05,
        gamma=0.5,
        lr_in=2.0,
    )
    refs = [
        reference.Optimizer(
            [p for p in b.parameters() if p.ndim == 2], optimizer="sgd", rule="hybrid", lr=0.05, gamma=0.5, lr_in=2.0
        ),
        reference.Optimizer(
            [p for p in b.parameters() if p.ndim != 2], optimizer="adam", rule="hybrid", lr=3e-3, gamma=0.5, lr_in=2.0
        ),
    ]
    try:
        assert (opt.param_groups[1]["gamma"], opt.param_groups[1]["lr_in"]) == (0.5, 2.0)
        torch.manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(4, 5), torch.randn(4, 2)
            for m, opts in ((a, [opt]), (b, refs)):
                for o in opts:
                    o.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
                for o in opts:
                    o.step()
        # float32 rounding of a few elementwise ops a step (the references run in float32 too): 1e-6.
        assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-6
    finally:
        opt.close()
