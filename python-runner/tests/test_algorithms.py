"""Rprop, ASGD and NAdam/RAdam's decoupled_weight_decay: mur.reference against
torch.optim in float64 (parameters and state), the server against torch.optim
(additive) on the native and wasm engines; with LAMB and LARS, the server
against mur.reference under every rule, and the arguments each refuses."""

import inspect

import pytest
import torch
from conftest import CLI, batches, net

import mur
from mur import reference

needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
TORCH = {"rprop": torch.optim.Rprop, "asgd": torch.optim.ASGD, "nadam": torch.optim.NAdam, "radam": torch.optim.RAdam}
# Rprop: both step-size bounds reached; ASGD: t0 small enough that averaging (mu < 1) starts.
CASES = [
    ("rprop", {}),
    ("rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.08))),
    ("asgd", {}),
    ("asgd", dict(lr=0.05, lambd=0.01, alpha=0.6, t0=5, weight_decay=0.01)),
    ("nadam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("radam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
# With the optax-only ones (no torch.optim class: their optax parity is test_trust_ratio.py).
EVERY = CASES + [
    ("lamb", dict(lr=0.01, weight_decay=0.1)),
    ("lars", dict(lr=0.1, trust_coefficient=0.02, nesterov=True)),
]


def torch_lacks(name, h):
    """The reason this torch cannot run the case (an argument it does not have), or None."""
    absent = [k for k in h if k not in inspect.signature(TORCH[name]).parameters]
    return (
        f"torch {torch.__version__} {TORCH[name].__name__} has no {', '.join(absent)} (torch >= 2.2)"
        if absent
        else None
    )


def skip_if_torch_lacks(name, h):
    why = torch_lacks(name, h)
    if why:
        pytest.skip(why)


def train(model, opt, steps, start=0, dtype=torch.float32):
    for x, y in batches(start + steps)[start:]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()
        opt.step()


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.fixture
def float64_default():
    """torch makes scalar state (ASGD's eta and mu) in the default dtype: float64 here, like the parameters."""
    was = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(was)


@pytest.mark.parametrize("name,h", CASES, ids=IDS)
def test_reference_is_torch_in_float64(float64_default, name, h):
    """Parameters and every state tensor torch keeps (Rprop's prev and
    step_size, ASGD's eta, mu and ax), 30 steps in float64: the same maths in
    a different order of operations agrees to ~1e-15; 1e-12 is far below any
    formula difference (>= 1e-6 after one step)."""
    skip_if_torch_lacks(name, h)
    a, b = net().double(), net().double()
    ta = TORCH[name](a.parameters(), **h)
    rb = reference.Optimizer(b.parameters(), optimizer=name, rule="additive", **h)
    train(a, ta, 30, dtype=torch.float64)
    train(b, rb, 30, dtype=torch.float64)
    assert max_diff(a, b) < 1e-12
    for p, q in zip(a.parameters(), b.parameters()):
        ts, rs = ta.state[p], rb.state[q]
        for k, v in ts.items():
            if k != "step":
                assert (torch.as_tensor(v, dtype=torch.float64) - rs[k]).abs().max().item() < 1e-12, k
    if name == "asgd" and h.get("t0", 1e6) < 30:
        assert float(ta.state[next(a.parameters())]["mu"]) < 1, "the case averages"


@needs_server
@pytest.mark.parametrize("backend", ["native", "wasm"])
@pytest.mark.parametrize("name,h", CASES, ids=IDS)
def test_server_additive_is_torch(request, backend, name, h):
    """float32 server vs float32 torch, 20 steps: rounding only (~1e-7 per step)."""
    skip_if_torch_lacks(name, h)
    address = request.getfixturevalue(f"{backend}_server")
    a, b = net(), net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer=name, rule="additive", server=address, **h)
    try:
        train(a, opt, 20)
        train(b, TORCH[name](b.parameters(), **h), 20)
        assert max_diff(a, b) < 1e-6
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
@pytest.mark.parametrize("name,h", EVERY, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EVERY)])
def test_server_matches_the_reference_under_every_rule(server, rule, name, h):
    a, b = net(), net()
    h = dict(h, **(dict(gamma=0.5) if rule == "hybrid" else {}))
    opt = mur.RemoteOptimizer(a.parameters(), optimizer=name, rule=rule, server=server, **h)
    try:
        train(a, opt, 20)
        train(b, reference.Optimizer(b.parameters(), optimizer=name, rule=rule, **h), 20)
        assert max_diff(a, b) < 1e-5  # float32 server vs float32 torch, 20 steps of rounding
        start = net()
        assert max_diff(a, start) > 1e-3, "the rule moved the parameters"
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("name", ["nadam", "radam"])
def test_decoupled_weight_decay_is_not_the_coupled_one(server, name):
    """The flag changes the trajectory (mur.reference runs on any torch)."""
    out = {}
    for dwd in (False, True):
        a = net()
        opt = mur.RemoteOptimizer(
            a.parameters(),
            optimizer=name,
            rule="additive",
            server=server,
            lr=0.01,
            weight_decay=0.1,
            decoupled_weight_decay=dwd,
        )
        assert opt.param_groups[0]["decoupled_weight_decay"] is dwd
        train(a, opt, 10)
        opt.close()
        b = net()
        train(
            b,
            reference.Optimizer(
                b.parameters(), optimizer=name, rule="additive", lr=0.01, weight_decay=0.1, decoupled_weight_decay=dwd
            ),
            10,
        )
        assert max_diff(a, b) < 1e-6
        out[dwd] = a
    assert max_diff(out[False], out[True]) > 1e-4


@needs_server
def test_arguments_torch_refuses_are_refused_with_their_name(server):
    bad = [
        ("rprop", dict(etas=(1.2, 0.5)), r"etas\[0\]"),
        ("rprop", dict(etas=(0.5, 1.0)), r"etas\[1\]"),
        ("rprop", dict(step_sizes=(-1.0, 50.0)), r"step_sizes\[0\]"),
        ("asgd", dict(lambd=-1.0), "lambd"),
        ("asgd", dict(alpha=-0.5), "alpha"),
        ("asgd", dict(lr=-0.1), "lr"),
        ("lamb", {}, "lr: required by lamb"),
        ("lars", dict(lr=0.1, trust_coefficient=-1.0), "trust_coefficient"),
    ]
    for name, h, what in bad:
        with pytest.raises(mur.MurError, match=what):
            mur.RemoteOptimizer(net().parameters(), optimizer=name, rule="additive", server=server, **h)
    for name in ("rprop", "asgd"):
        with pytest.raises(ValueError, match=f"decoupled_weight_decay=True: not an argument of {name}"):
            mur.RemoteOptimizer(net().parameters(), optimizer=name, server=server, decoupled_weight_decay=True)
    with pytest.raises(ValueError, match=r"weight_decay=0.1: not a hyperparameter of rprop"):
        mur.RemoteOptimizer(net().parameters(), optimizer="rprop", server=server, weight_decay=0.1)


@needs_server
@pytest.mark.parametrize("name,h", [("rprop", dict(lr=0.02)), ("asgd", dict(lr=0.05, t0=3))])
def test_torchs_other_arguments_are_accepted(server, name, h):
    """foreach, capturable (CPU), differentiable=False: no-ops; maximize steps on -grad, as torch."""
    a, b = net(), net()
    flags = dict(foreach=True, capturable=True, differentiable=False, maximize=True)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer=name, rule="additive", server=server, **h, **flags)
    # torch's own: 1.13 has foreach and maximize only; 2.x refuses capturable=True on CPU
    theirs = {k: v for k, v in flags.items() if k in inspect.signature(TORCH[name]).parameters and k != "capturable"}
    try:
        train(a, opt, 10)
        train(b, TORCH[name](b.parameters(), **h, **theirs), 10)
        assert max_diff(a, b) < 1e-6
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("name", ["rprop", "asgd", "nadam", "radam"])
def test_defaults_are_torchs_on_the_server_and_in_the_reference(server, name):
    """One set of defaults: torch's signature, the server's table (RemoteOptimizer's
    param_groups) and mur.reference.DEFAULTS."""
    opt = mur.RemoteOptimizer(net().parameters(), optimizer=name, rule="additive", server=server)
    try:
        group = opt.param_groups[0]
        for k, v in reference.DEFAULTS[name].items():
            assert group[k] == pytest.approx(v), k
        for k, p in inspect.signature(TORCH[name]).parameters.items():
            if k in reference.DEFAULTS[name]:
                want = tuple(p.default) if isinstance(p.default, tuple) else p.default
                assert reference.DEFAULTS[name][k] == pytest.approx(want), k
    finally:
        opt.close()
