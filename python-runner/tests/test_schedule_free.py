"""Schedule-Free AdamW through RemoteOptimizer: the server against mur.reference
under every rule, train() / eval() end to end on every transport (x as
optax.contrib.schedule_free_eval_params defines it, steps refused in eval mode,
y back bit for bit, the mode in state_dict), and bad hyperparameters refused
by name with the session unchanged."""

import pytest
import torch
from conftest import CLI, against_reference, max_diff, start_tcp, stop

import mur
from mur import reference

needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
CASES = [
    dict(lr=0.01),
    dict(lr=0.02, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-4),
    dict(lr=0.02, warmup_steps=5, weight_lr_power=1.0),
]
IDS = [f"case{i}" for i in range(len(CASES))]


class Problem(torch.nn.Module):
    """A matrix and a vector, with a loss whose gradient depends on the parameters."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(3, 5) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(5) * 0.5)

    def loss(self, t):
        total = 0
        for p in (self.w, self.b):
            k = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)
            total = total + (torch.sin(p + 0.3 * k + 0.1 * t) * torch.cos(0.7 * k)).sum() + 0.2 * (p * p).sum()
        return total


@pytest.fixture(scope="module")
def tcp_server():
    proc, info = start_tcp()
    assert info["data_port"] > 0
    yield f"127.0.0.1:{info['port']}"
    stop(proc)


def train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        model.loss(t).backward()
        opt.step()


def ref_x(model, opt, b1):
    """The reference's evaluation point of each parameter."""
    return [reference.eval_params(p.detach(), opt.state[p]["z"], b1) for p in model.parameters()]


@needs_server
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_matches_the_reference_under_every_rule(server, rule, h):
    """float32 server vs float32 mur.reference, 20 steps of rounding (~12 ops a step): 1e-5."""
    h = dict(h, **(dict(lr_out=0.05) if rule in ("multiplicative", "hybrid") else {}))
    diff, moved = against_reference(server, Problem, train, "schedule_free_adamw", rule, h)
    assert diff < 1e-5
    assert moved > 1e-3, "the rule moved the parameters"


@needs_server
@pytest.mark.parametrize("rule", ["additive", "exp_sign"])
def test_eval_params_are_the_references_x(server, rule):
    """eval_params() = the reference's (y - (1 - b1) z) / b1, b1 = 0.8, to float32 rounding."""
    a, b = Problem(), Problem()
    h = dict(lr=0.02, betas=(0.8, 0.999))
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="schedule_free_adamw", rule=rule, server=server, **h)
    try:
        assert all(torch.equal(x, p.detach()) for p, x in opt.eval_params().items()), "before a step x = y"
        train(a, opt, 15)
        ref = reference.Optimizer(b.parameters(), optimizer="schedule_free_adamw", rule=rule, **h)
        train(b, ref, 15)
        got = opt.eval_params()
        for p, x in zip(a.parameters(), ref_x(b, ref, 0.8)):
            assert (got[p] - x).abs().max().item() < 1e-5
            assert (got[p] - p.detach()).abs().max().item() > 1e-4, "x is y"
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("transport", ["shm", "shm-overlap", "tcp", "grpc"])
def test_train_and_eval(request, server_for, transport):
    """eval() puts x in the parameters (the reference's, to float32 rounding),
    step() is refused there and changes nothing, train() gives y back bit for
    bit, and the trajectory goes on as if eval() had never happened."""
    a, b = Problem(), Problem()
    opt = mur.RemoteOptimizer(
        a.parameters(),
        optimizer="schedule_free_adamw",
        rule="additive",
        server=request.getfixturevalue("tcp_server") if transport == "tcp" else server_for(transport.split("-")[0]),
        transport=transport.split("-")[0],
        overlap=transport == "shm-overlap",
        lr=0.02,
    )
    ref = reference.Optimizer(b.parameters(), optimizer="schedule_free_adamw", rule="additive", lr=0.02)
    try:
        assert opt.mode == "train"
        train(a, opt, 10)
        train(b, ref, 10)
        y = [p.detach().clone() for p in a.parameters()]
        own = [p.data for p in a.parameters()]  # on shm: views of the server's arena
        assert opt.eval() is opt and opt.mode == "eval"
        # x is bound, not written: the parameters' own memory (the server's, on shm) still holds y.
        assert all(torch.equal(m, q) for m, q in zip(own, y))
        x = ref_x(b, ref, 0.9)
        ref.eval()  # mur.reference has the same switch
        assert all(torch.equal(p.detach(), q) for p, q in zip(b.parameters(), x))
        with pytest.raises(RuntimeError, match="eval mode"):
            ref.step()
        ref.train()
        for p, want, yp in zip(a.parameters(), x, y):
            assert (p.detach() - want).abs().max().item() < 1e-5
            assert (p.detach() - yp).abs().max().item() > 1e-4, "x is y: eval() changed nothing"
        eval_loss = a.loss(10).item()
        x_bits = [p.detach().clone() for p in a.parameters()]
        opt.eval()  # idempotent: x stays x (not x computed from x as if it were y)
        assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), x_bits))
        a.zero_grad()
        a.loss(10).backward()
        with pytest.raises(mur.FailedPreconditionError, match=r"eval mode.*opt\.train\(\)"):
            opt.step()
        assert a.loss(10).item() == eval_loss
        opt.train()
        assert opt.mode == "train"
        assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), y)), "train() did not restore y"
        assert all(p.data.data_ptr() == m.data_ptr() for p, m in zip(a.parameters(), own)), "not rebound"
        train(a, opt, 10, start=10)
        train(b, ref, 10, start=10)
        assert max_diff(a, b) < 1e-5, "eval() disturbed the trajectory"
    finally:
        opt.close()


@needs_server
def test_eval_of_bfloat16_parameters_starts_from_the_float32_master(server):
    """A bfloat16 model holds a rounding of y; x is computed from the server's
    float32 y (the master) and rounded once: exactly bf16((y32 - (1-b1) z) / b1).
    (From the bfloat16 y instead, 10 of the 20 elements differ.)"""
    model = Problem().to(torch.bfloat16)
    opt = mur.RemoteOptimizer(
        model.parameters(), optimizer="schedule_free_adamw", rule="additive", server=server, lr=0.05
    )
    try:
        train(model, opt, 8)
        sd = opt.state_dict()
        opt.eval()
        for i, p in enumerate(model.parameters()):
            y32 = torch.as_tensor(sd["mur"]["values"][i]).view(p.shape)
            want = ((y32 - (1 - 0.9) * sd["state"][i]["z"].view(p.shape)) / 0.9).to(torch.bfloat16)
            assert torch.equal(p.detach(), want), i
        opt.train()
    finally:
        opt.close()


@needs_server
def test_state_dict_carries_the_mode(server):
    """A state_dict taken in eval mode holds y and says "eval": the optimizer
    stays in eval mode, and a fresh one loading it comes up in eval mode with x,
    whose train() gives y and continues the same trajectory."""
    a, b = Problem(), Problem(seed=1)
    kw = dict(optimizer="schedule_free_adamw", rule="hybrid", server=server, lr=0.02)
    opt = mur.RemoteOptimizer(a.parameters(), **kw)
    other = mur.RemoteOptimizer(b.parameters(), **kw)
    try:
        train(a, opt, 8)
        y = [p.detach().clone() for p in a.parameters()]
        opt.eval()
        x = [p.detach().clone() for p in a.parameters()]
        sd = opt.state_dict()
        assert sd["mur"]["mode"] == "eval" and opt.mode == "eval"
        assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), x)), "state_dict left eval mode"
        other.load_state_dict(sd)
        assert other.mode == "eval"
        assert all(torch.equal(p.detach(), q) for p, q in zip(b.parameters(), x))
        other.train()
        opt.train()
        assert all(torch.equal(p.detach(), q) for p, q in zip(b.parameters(), y))
        train(a, opt, 5, start=8)
        train(b, other, 5, start=8)
        assert max_diff(a, b) == 0
        assert opt.state_dict()["mur"]["mode"] == "train"
    finally:
        opt.close()
        other.close()


@needs_server
def test_eval_needs_schedule_free(server):
    model = Problem()
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adamw", rule="additive", server=server)
    try:
        with pytest.raises(ValueError, match="schedule_free_adamw"):
            opt.eval()
        with pytest.raises(ValueError, match="schedule_free_adamw"):
            opt.train()
    finally:
        opt.close()


@needs_server
def test_bad_hyperparameters_are_refused_by_name(server):
    """INVALID_ARGUMENT naming the hyperparameter (b1 must be > 0: x divides by it);
    a refused step override leaves the session as it was."""
    bad = [
        (dict(betas=(0.0, 0.999)), r"betas\[0\]"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
        (dict(lr=-0.1), "lr"),
        (dict(eps=-1.0), "eps"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(warmup_steps=2.5), "warmup_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(weight_lr_power=-1.0), "weight_lr_power"),
    ]
    for h, what in bad:
        with pytest.raises(mur.MurError, match=what) as e:
            mur.RemoteOptimizer(
                Problem().parameters(), optimizer="schedule_free_adamw", rule="additive", server=server, **h
            )
        assert e.value.code.name == "INVALID_ARGUMENT"
    model = Problem()
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="schedule_free_adamw", rule="additive", server=server)
    try:
        train(model, opt, 3)
        before = [p.detach().clone() for p in model.parameters()]
        state = opt.state_dict()
        for key, value, what in [("weight_lr_power", -1.0, "weight_lr_power"), ("warmup_steps", 3, "warmup_steps")]:
            good = opt.param_groups[0][key]
            opt.param_groups[0][key] = value
            opt.zero_grad()
            model.loss(3).backward()
            with pytest.raises(mur.MurError, match=what):
                opt.step()
            opt.param_groups[0][key] = good
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        after = opt.state_dict()
        for k, st in state["state"].items():
            for slot, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(after["state"][k][slot])), slot
    finally:
        opt.close()


@pytest.fixture(scope="module")
def two_servers():
    with mur.LocalServer() as a, mur.LocalServer() as b:
        yield [a.address, b.address]


@needs_server
def test_sharded_train_and_eval(two_servers):
    """ShardedRemoteOptimizer: eval() on every shard (the matrix on one server, the
    vector on the other), step() refused in eval mode, train() gives y back, and
    its state_dict says "eval" and a load restores the mode."""
    from mur.sharded import ShardedRemoteOptimizer

    a, b = Problem(), Problem()
    kw = dict(optimizer="schedule_free_adamw", rule="additive", server=two_servers, lr=0.02)
    opt = ShardedRemoteOptimizer(a.parameters(), **kw)
    ref = reference.Optimizer(b.parameters(), optimizer="schedule_free_adamw", rule="additive", lr=0.02)
    try:
        assert len({opt.shard_of(p) for p in a.parameters()}) == 2, "both servers hold a parameter"
        train(a, opt, 6)
        train(b, ref, 6)
        y = [p.detach().clone() for p in a.parameters()]
        opt.eval()
        assert opt.mode == "eval"
        for p, x in zip(a.parameters(), ref_x(b, ref, 0.9)):
            assert (p.detach() - x).abs().max().item() < 1e-5
        a.zero_grad()
        a.loss(6).backward()
        with pytest.raises(mur.FailedPreconditionError, match="eval mode"):
            opt.step()
        sd = opt.state_dict()
        assert sd["mode"] == "eval" and opt.mode == "eval"
        opt.train()
        assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), y))
        opt.load_state_dict(sd)
        assert opt.mode == "eval"
        opt.train()
        assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), y))
        train(a, opt, 4, start=6)
        train(b, ref, 4, start=6)
        assert max_diff(a, b) < 1e-5
    finally:
        opt.close()


@needs_server
def test_a_restart_on_a_state_dir_keeps_z_and_the_weights(scratch):
    """A server on --state-dir stopped and started again mid-run: z, v and the
    averaging scalars come back (the journal), the trajectory goes on as the
    reference's, and eval() gives the reference's x."""
    from pathlib import Path

    from test_transport import start_cli, stop_proc

    sock, state = Path(scratch) / "s.sock", Path(scratch) / "state"
    proc = start_cli(sock, "--state-dir", str(state))
    a, b = Problem(), Problem()
    h = dict(lr=0.02, warmup_steps=3, lr_out=0.05)
    opt = mur.RemoteOptimizer(
        a.parameters(), optimizer="schedule_free_adamw", rule="hybrid", server=f"unix:{sock}", reconnect_timeout=30, **h
    )
    ref = reference.Optimizer(b.parameters(), optimizer="schedule_free_adamw", rule="hybrid", **h)
    try:
        train(a, opt, 5)
        train(b, ref, 5)
        stop_proc(proc)
        proc = start_cli(sock, "--state-dir", str(state))
        train(a, opt, 5, start=5)
        train(b, ref, 5, start=5)
        assert max_diff(a, b) < 1e-5
        opt.eval()
        for p, x in zip(a.parameters(), ref_x(b, ref, 0.9)):
            assert (p.detach() - x).abs().max().item() < 1e-5
        opt.train()
    finally:
        opt.close()
        stop_proc(proc)
