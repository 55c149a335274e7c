"""Adafactor: mur.reference against torch.optim.Adafactor in float64
(parameters and row_var / col_var / variance), the server against torch
(additive) on the native and wasm engines, the server against mur.reference
under every rule, torch's refusals by name, its other arguments, and
state_dict both ways. Parameters of 1, 2 and 3 dims: a vector keeps its
second moment whole, a matrix (or a stack of them) as row and column means."""

import inspect
import math

import pytest
import torch
from conftest import CLI, against_reference, max_diff

import mur
from mur import reference

needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
TORCH = getattr(torch.optim, "Adafactor", None)
needs_torch_adafactor = pytest.mark.skipif(TORCH is None, reason=f"torch {torch.__version__} has no Adafactor (>= 2.5)")
# eps1 given (1e-30: below every v, so only the float32/float64 difference of None is gone), the
# clip above the update's RMS (d = 1.5 clips less), weight decay, a slower second moment.
CASES = [
    {},
    dict(lr=0.05, d=1.5, eps=(None, 1e-2)),
    dict(beta2_decay=-0.5, eps=(1e-30, 1e-3), weight_decay=0.1),
]
IDS = [f"case{i}" for i in range(len(CASES))]
SHAPES = [(3, 5), (5,), (2, 3, 4)]


class Problem(torch.nn.Module):
    """A matrix, a vector and a stack of two matrices, with a loss whose gradient
    depends on the parameters (the trajectory is not a fixed walk)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.w = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(s) * 0.5) for s in SHAPES)

    def loss(self, t):
        total = 0
        for p in self.w:
            k = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)
            total = total + (torch.sin(p + 0.3 * k + 0.1 * t) * torch.cos(0.7 * k)).sum() + 0.2 * (p * p).sum()
        return total


def train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        model.loss(t).backward()
        opt.step()


@needs_torch_adafactor
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_reference_is_torch_in_float64(h):
    """30 steps in float64, parameters and every state tensor torch keeps: the
    same maths in another order of operations agrees to ~1e-15; 1e-12 is far
    below a formula difference (a wrong dim, a missing clip: >= 1e-4)."""
    a, b = Problem().double(), Problem().double()
    ta = TORCH(a.parameters(), **h)
    rb = reference.Optimizer(b.parameters(), optimizer="adafactor", rule="additive", **h)
    train(a, ta, 30)
    train(b, rb, 30)
    assert max_diff(a, b) < 1e-12
    for p, q in zip(a.parameters(), b.parameters()):
        ts, rs = ta.state[p], rb.state[q]
        assert {k for k in ts if k != "step"} == {k for k in rs if k != "step"}
        for k, v in ts.items():
            if k != "step":
                assert v.shape == rs[k].shape, k
                assert (v - rs[k]).abs().max().item() < 1e-12, k
    assert max_diff(a, Problem().double()) > 1e-2, "the parameters moved"


@needs_server
@needs_torch_adafactor
@pytest.mark.parametrize("backend", ["native", "wasm"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_additive_is_torch(request, backend, h):
    """float32 server vs float32 torch, 20 steps. Each step moves a weight by
    rho rms(theta) |u^| <= ~1e-2 with |u^| <= d sqrt(n); the two differ by
    the rounding of the reductions (rms(theta), rms(u), the row and column
    means: a few ulp each) and ~10 elementwise ops, ~1e-7 relative a step:
    2e-6 after 20 steps bounds that; a wrong formula is off by >= 1e-4."""
    address = request.getfixturevalue(f"{backend}_server")
    a, b = Problem(), Problem()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adafactor", rule="additive", server=address, **h)
    try:
        train(a, opt, 20)
        train(b, TORCH(b.parameters(), **h), 20)
        assert max_diff(a, b) < 2e-6
        assert max_diff(a, Problem()) > 1e-2, "the parameters moved"
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_matches_the_reference_under_every_rule(server, rule, h):
    """float32 server vs float32 mur.reference (any torch), 20 steps of rounding."""
    diff, moved = against_reference(server, Problem, train, "adafactor", rule, h)
    assert diff < 1e-5
    assert moved > 1e-3, "the rule moved the parameters"


@needs_server
def test_arguments_torch_refuses_are_refused_with_their_name(server):
    """torch's checks (beta2_decay <= 0, eps >= 0, d >= 1, lr and weight_decay >= 0),
    INVALID_ARGUMENT naming the argument; a refused step override leaves the session as it was."""
    bad = [
        (dict(beta2_decay=0.5), "beta2_decay"),
        (dict(eps=(-1e-3, 1e-3)), r"eps\[0\]"),
        (dict(eps=(None, -1.0)), r"eps\[1\]"),
        (dict(d=0.5), r"\bd\b"),
        (dict(lr=-0.1), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
    ]
    for h, what in bad:
        with pytest.raises(mur.MurError, match=what) as e:
            mur.RemoteOptimizer(Problem().parameters(), optimizer="adafactor", rule="additive", server=server, **h)
        assert e.value.code.name == "INVALID_ARGUMENT"
    model = Problem()
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adafactor", rule="additive", server=server)
    try:
        train(model, opt, 3)
        before = [p.detach().clone() for p in model.parameters()]
        state = opt.state_dict()
        opt.param_groups[0]["d"] = 0.5
        opt.zero_grad()
        model.loss(3).backward()
        with pytest.raises(mur.MurError, match=r"\bd\b"):
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        opt.param_groups[0]["d"] = 1.0
        after = opt.state_dict()
        for k, st in state["state"].items():
            for slot, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(after["state"][k][slot])), slot
    finally:
        opt.close()


@needs_server
@needs_torch_adafactor
def test_torchs_other_arguments_are_accepted(server):
    """foreach: a no-op; maximize steps on -grad, as torch."""
    a, b = Problem(), Problem()
    flags = dict(foreach=True, maximize=True)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adafactor", rule="additive", server=server, lr=0.02, **flags)
    try:
        train(a, opt, 10)
        train(b, TORCH(b.parameters(), lr=0.02, **flags), 10)
        assert max_diff(a, b) < 2e-6
    finally:
        opt.close()


@needs_server
@needs_torch_adafactor
def test_state_dict_goes_both_ways_with_torch(server):
    """The server's state in torch's shapes (row_var [..., R, 1], col_var [..., 1, C],
    variance like the vector): torch.optim.Adafactor continues from it, and the server
    continues from torch's, both as if never moved."""
    a, b = Problem(), Problem()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adafactor", rule="additive", server=server)
    ta = TORCH(b.parameters())
    try:
        train(a, opt, 5)
        train(b, ta, 5)
        sd = opt.state_dict()
        for p, st in zip(a.parameters(), (sd["state"][k] for k in sorted(sd["state"]))):
            if p.dim() >= 2:
                assert st["row_var"].shape == (*p.shape[:-1], 1) and st["col_var"].shape == (
                    *p.shape[:-2],
                    1,
                    p.shape[-1],
                )
            else:
                assert st["variance"].shape == p.shape
        c = Problem()
        c.load_state_dict(a.state_dict())
        tc = TORCH(c.parameters())
        tc.load_state_dict(sd)
        train(c, tc, 5, start=5)
        train(b, ta, 5, start=5)
        assert max_diff(c, b) < 2e-6
        d = Problem()
        d.load_state_dict(b.state_dict())
        opt2 = mur.RemoteOptimizer(d.parameters(), optimizer="adafactor", rule="additive", server=server)
        try:
            opt2.load_state_dict(ta.state_dict())
            train(d, opt2, 5, start=10)
            train(b, ta, 5, start=10)
            assert max_diff(d, b) < 2e-6
        finally:
            opt2.close()
    finally:
        opt.close()


@needs_server
def test_defaults_are_torchs_on_the_server_and_in_the_reference(server):
    opt = mur.RemoteOptimizer(Problem().parameters(), optimizer="adafactor", rule="additive", server=server)
    try:
        group = opt.param_groups[0]
        for k, v in reference.DEFAULTS["adafactor"].items():
            assert group[k] == (v if isinstance(v, tuple) else pytest.approx(v)), k  # eps: (None, 1e-3)
        if TORCH is not None:
            for k, p in inspect.signature(TORCH).parameters.items():
                if k in reference.DEFAULTS["adafactor"]:
                    assert reference.DEFAULTS["adafactor"][k] == p.default, k
    finally:
        opt.close()


def test_the_relative_step_and_the_clip_in_the_reference():
    """Step 1 of a vector: v = g^2 (t^tau = 1), u = sign(g), rms(u) = 1 <= d: no clip;
    the step is min(lr, 1) max(eps2, rms(theta)) sign(g) exactly."""
    p = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = reference.Optimizer([p], optimizer="adafactor", rule="additive", lr=0.1)
    p.grad = torch.tensor([3.0, -0.5, 1e-3, 2.0], dtype=torch.float64)
    before = p.detach().clone()
    opt.step()
    rms = math.sqrt((before**2).mean().item())
    assert torch.allclose(p.detach(), before - 0.1 * rms * p.grad.sign(), atol=1e-15)
