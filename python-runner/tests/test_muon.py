"""Muon (torch >= 2.9's torch.optim.Muon): mur.reference against torch's own
maths in float64, the server against torch.optim.Muon in float32 (as torch
runs it: Newton-Schulz in bfloat16; and with its Newton-Schulz in float32),
the server against mur.reference under every rule, and the arguments and
parameters Muon refuses, by name. Skipped on a torch without Muon (1.13)."""

import pytest
import torch
from conftest import CLI, against_reference, batches

import mur
from mur import reference

muon_module = pytest.importorskip("torch.optim._muon", reason=f"torch {torch.__version__} has no Muon (torch >= 2.9)")
needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
CASES = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False, momentum=0.9, weight_decay=0.0),
    dict(lr=0.02, adjust_lr_fn="match_rms_adamw", ns_steps=3),
    dict(lr=0.02, adjust_lr_fn="spectral_unclamped", ns_coefficients=(2.0, -1.5, 0.5), eps=1e-3),
]
IDS = [f"muon-{i}" for i in range(len(CASES))]


def mats(seed=0):
    """A bias-free tanh MLP: one tall (8 x 5) and one wide (2 x 8) weight, Muon's 2-D parameters."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8, bias=False), torch.nn.Tanh(), torch.nn.Linear(8, 2, bias=False))


def train(model, opt, steps, dtype=torch.float32):
    for x, y in batches(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
        opt.step()


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


class _TorchWith:
    """torch, with its bfloat16 standing for another dtype: torch's
    _zeropower_via_newtonschulz then runs its own maths in that dtype."""

    def __init__(self, dtype):
        self.bfloat16 = dtype

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def torch_ns_in(monkeypatch):
    return lambda dtype: monkeypatch.setattr(muon_module, "torch", _TorchWith(dtype))


@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_reference_is_torch_in_float64(torch_ns_in, h):
    """torch's Muon with its Newton-Schulz in float64 (not bfloat16), 20 steps:
    the same maths agrees to ~1e-15; 1e-12 is far below any formula difference."""
    torch_ns_in(torch.float64)
    a, b = mats().double(), mats().double()
    ta = torch.optim.Muon(a.parameters(), **h)
    rb = reference.Optimizer(b.parameters(), optimizer="muon", rule="additive", **h)
    train(a, ta, 20, torch.float64)
    train(b, rb, 20, torch.float64)
    assert max_diff(a, b) < 1e-12
    for p, q in zip(a.parameters(), b.parameters()):
        assert (ta.state[p]["momentum_buffer"] - rb.state[q]["momentum_buffer"]).abs().max().item() < 1e-12
    assert max_diff(a, mats()) > 1e-2, "the parameters moved"


@needs_server
@pytest.mark.parametrize("backend", ["native", "wasm"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_additive_is_torch(request, torch_ns_in, backend, h):
    """float32 server vs torch.optim.Muon on CPU float32, 10 steps. Each step
    moves a weight by lr * adjust * NS(u), NS(u)'s entries below ~1.

    As torch runs it (Newton-Schulz in bfloat16, 8 bits of mantissa), NS(u)
    differs from the float32 one by up to a few 2^-8 relative: 2e-2 absolute
    per step at most; over 10 steps at lr 0.02 and adjust <= 2.9, within
    10 * 0.058 * 2e-2 = 1.2e-2. mur's own maths would be off by lr * adjust
    each step with a wrong adjustment, transposition or decay (> 5e-2 in 10
    steps), so 1.2e-2 still tells them apart; the float32 comparison below is
    the tight one.

    With torch's Newton-Schulz in float32 (its own code, bfloat16 standing for
    float32): float32 rounding amplified by Newton-Schulz, whose steps
    multiply small singular values by a = 3.4 (2 with the last case's
    coefficients): u * a^ns_steps ~ 3e-5 relative in NS(u), 10 steps at
    0.058: 2e-5 (the order of the products differs too, which this bound covers)."""
    address = request.getfixturevalue(f"{backend}_server")
    a, b, c = mats(), mats(), mats()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="muon", rule="additive", server=address, **h)
    try:
        train(a, opt, 10)
        train(b, torch.optim.Muon(b.parameters(), **h), 10)
        bf16 = max_diff(a, b)
        torch_ns_in(torch.float32)
        train(c, torch.optim.Muon(c.parameters(), **h), 10)
        f32 = max_diff(a, c)
        print(f"muon {h} on {backend}: vs torch (bfloat16 NS) {bf16:.2e}, vs torch with float32 NS {f32:.2e}")
        assert bf16 < 1.2e-2
        assert f32 < 2e-5
        assert max_diff(a, mats()) > 5e-2, "the parameters moved"
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_matches_the_reference_under_every_rule(server, rule, h):
    """float32 server vs mur.reference on float32 parameters (Newton-Schulz in
    float64), 20 steps: the float32 rounding of NS amplified as above, 2e-5
    per 10 steps; 1e-4."""
    diff, moved = against_reference(server, mats, train, "muon", rule, h)
    assert diff < 1e-4
    assert moved > 1e-3, "the rule moved the parameters"


@needs_server
def test_what_muon_refuses_is_refused_by_name(server):
    model = torch.nn.Linear(3, 4)  # weight 4 x 3, bias (4,): torch.optim.Muon refuses the bias
    with pytest.raises(mur.InvalidArgumentError, match=r"'bias'.*2-D"):
        mur.RemoteOptimizer(model.named_parameters(), optimizer="muon", server=server)
    with pytest.raises(ValueError, match="2D parameters"):
        torch.optim.Muon(model.parameters())
    for h, what in [
        (dict(ns_steps=100), "ns_steps"),
        (dict(ns_steps=2.5), "ns_steps"),
        (dict(adjust_lr_fn="rms"), "adjust_lr_fn"),
        (dict(momentum=-0.5), "momentum"),
        (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
        (dict(lr=-1.0), "lr"),
    ]:
        with pytest.raises(mur.InvalidArgumentError, match=what):
            mur.RemoteOptimizer([model.weight], optimizer="muon", server=server, **h)


@needs_server
def test_defaults_are_torchs(server):
    """torch's signature, the server's table and mur.reference agree; adjust_lr_fn None as torch."""
    import inspect

    theirs = {k: v.default for k, v in inspect.signature(torch.optim.Muon).parameters.items() if k != "params"}
    opt = mur.RemoteOptimizer([torch.nn.Linear(3, 4).weight], optimizer="muon", server=server)
    try:
        group = opt.param_groups[0]
        for k, v in theirs.items():
            ours = tuple(group[k]) if k == "ns_coefficients" else group[k]
            assert ours == pytest.approx(v) if v is not None else ours is None, k
            assert reference.DEFAULTS["muon"][k] == v, k
    finally:
        opt.close()


def mlp(seed=0):
    """A tanh MLP with biases: Muon for its weights, AdamW for its biases."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def recipe(model):
    """The usual Muon recipe as param groups, each naming its optimizer."""
    mats = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    return [{"params": mats, "optimizer": "muon", "lr": 0.02}, {"params": rest, "optimizer": "adamw", "lr": 3e-3}]


@needs_server
@pytest.mark.parametrize("backend", ["native", "wasm"])
def test_one_session_is_torch_muon_plus_adamw(request, torch_ns_in, backend):
    """One RemoteOptimizer, one step, two optimizers: step by step against
    torch.optim.Muon (its Newton-Schulz in float32, as above: 2e-5 over 10
    steps) and torch.optim.AdamW (float32 rounding, ~1e-7 a step: 1e-6) on
    the same parameters; state_dict records each group's optimizer and loads
    back."""
    torch_ns_in(torch.float32)
    a, b = mlp(), mlp()
    opt = mur.RemoteOptimizer(
        recipe(a), optimizer="muon", rule="additive", server=request.getfixturevalue(f"{backend}_server")
    )
    mats = [p for p in b.parameters() if p.ndim == 2]
    rest = [p for p in b.parameters() if p.ndim != 2]
    muon, adamw = torch.optim.Muon(mats, lr=0.02), torch.optim.AdamW(rest, lr=3e-3)
    try:
        assert [g["optimizer"] for g in opt.param_groups] == ["muon", "adamw"]
        assert opt.param_groups[1]["weight_decay"] == 0.01 and "ns_steps" not in opt.param_groups[1]
        for x, y in batches(10):
            for o in (opt, muon, adamw):
                o.zero_grad()
            torch.nn.functional.mse_loss(a(x), y).backward()
            torch.nn.functional.mse_loss(b(x), y).backward()
            opt.step()
            muon.step()
            adamw.step()
            for p, q in zip(a.parameters(), b.parameters()):
                assert (p - q).abs().max().item() < (2e-5 if p.ndim == 2 else 1e-6), tuple(p.shape)
        assert max_diff(a, mlp()) > 5e-2, "the parameters moved"
        sd = opt.state_dict()
        assert [g["optimizer"] for g in sd["param_groups"]] == ["muon", "adamw"]
        c = mlp()
        c.load_state_dict(a.state_dict())
        again = mur.RemoteOptimizer(
            recipe(c), optimizer="muon", rule="additive", server=request.getfixturevalue(f"{backend}_server")
        )
        try:
            again.load_state_dict(sd)
            x, y = batches(11)[10]
            for m, o in ((a, opt), (c, again)):
                o.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
                o.step()
            assert max_diff(a, c) == 0, "the reloaded session steps as the original"
        finally:
            again.close()
    finally:
        opt.close()


@needs_server
def test_a_mixed_session_refuses_what_a_group_cannot_take(server):
    model = mlp()
    groups = recipe(model)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: momentum=0.9: not a hyperparameter of adamw"):
        mur.RemoteOptimizer([groups[0], {**groups[1], "momentum": 0.9}], optimizer="muon", server=server)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: optimizer='adamx': unknown"):
        mur.RemoteOptimizer([groups[0], {**groups[1], "optimizer": "adamx"}], optimizer="muon", server=server)
    with pytest.raises(mur.InvalidArgumentError, match=r"'0.bias'.*2-D"):  # a bias in the Muon group
        mur.RemoteOptimizer(
            [
                {"params": [("0.weight", model[0].weight), ("0.bias", model[0].bias)]},
                {**groups[1], "params": [("2.bias", model[2].bias)]},
            ],
            optimizer="muon",
            server=server,
        )
