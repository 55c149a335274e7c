"""The three flags that bridge Keras/optax semantics (docs/frameworks.md):
eps_before_correction (adam, adamw), eps_in_sqrt (rmsprop, adagrad) and
lr_in_momentum (sgd, rmsprop). mur.reference against the formulas written out
here, and the server (native and wasm engines) against mur.reference, with an
lr schedule wherever lr_in_momentum is set (at a constant lr it changes
nothing). The real Keras and optax are compared in lab/tests/test_frameworks.py."""

import math

import pytest
import torch
from conftest import ROOT

import mur
from mur import reference

CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
ADDON = ROOT / "ts-server" / "native" / "build" / "Release" / "mur_native.node"
needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")

# (optimizer, hyperparameters): eps is large enough for its placement to matter.
CASES = [
    ("adam", dict(lr=0.01, eps=1e-2, eps_before_correction=True)),
    ("adam", dict(lr=0.01, eps=1e-2, amsgrad=True, eps_before_correction=True)),
    ("adamw", dict(lr=0.01, eps=1e-2, weight_decay=0.1, eps_before_correction=True)),
    ("adagrad", dict(lr=0.1, eps=0.1, initial_accumulator_value=0.1, eps_in_sqrt=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-2, eps_in_sqrt=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-2, centered=True, eps_in_sqrt=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.9, lr_in_momentum=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-2, momentum=0.5, eps_in_sqrt=True, lr_in_momentum=True)),
    ("sgd", dict(lr=0.05, momentum=0.9, lr_in_momentum=True)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, lr_in_momentum=True)),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01, lr_in_momentum=True)),
]
FLAGS = ("eps_before_correction", "eps_in_sqrt", "lr_in_momentum")
STEPS = 20


def schedule(k):
    """lr factor of step k (0-based): decays, with one step at lr 0."""
    return 0.0 if k == 12 else 0.85**k


def net(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(dtype)


def train(model, opt, lr0):
    g = torch.Generator().manual_seed(1)
    for k in range(STEPS):
        x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
        for group in opt.param_groups:
            group["lr"] = lr0 * schedule(k)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.to(model[0].weight.dtype)), y.to(model[0].weight.dtype)).backward()
        opt.step()
    return model


def params(model):
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def test_reference_flags_are_the_other_frameworks_formulas():
    """One step-by-step check of each flag's formula, on numbers, in float64."""
    g = torch.tensor([0.3, -0.02, 1e-4], dtype=torch.float64)
    b1, b2, eps, lr = 0.9, 0.999, 1e-3, 0.1
    for amsgrad in (False, True):
        p = torch.ones(3, dtype=torch.float64)
        s = {}
        d, scale, _ = reference.direction(
            "adam",
            g,
            p,
            s,
            dict(
                reference.DEFAULTS["adam"], betas=(b1, b2), eps=eps, lr=lr, amsgrad=amsgrad, eps_before_correction=True
            ),
            1,
        )
        m, v = (1 - b1) * g, (1 - b2) * g * g
        # Keras: theta -= lr sqrt(1-b2)/(1-b1) m / (sqrt(v) + eps)
        assert torch.allclose(lr * scale * d, lr * math.sqrt(1 - b2) / (1 - b1) * m / (v.sqrt() + eps), rtol=1e-14)
    s = {"sum": torch.full((3,), 0.1, dtype=torch.float64)}
    d, _, _ = reference.direction("adagrad", g, p, s, dict(reference.DEFAULTS["adagrad"], eps=eps, eps_in_sqrt=True), 1)
    assert torch.allclose(d, g / (0.1 + g * g + eps).sqrt(), rtol=1e-14)  # Keras/optax: g / sqrt(acc + eps)
    s = {}
    d, _, _ = reference.direction(
        "rmsprop", g, p, s, dict(reference.DEFAULTS["rmsprop"], alpha=0.9, eps=eps, centered=True, eps_in_sqrt=True), 1
    )
    assert torch.allclose(d, g / (0.1 * g * g - (0.1 * g) ** 2 + eps).sqrt(), rtol=1e-14)
    # Keras SGD: v = mu v - lr g; theta += v. Two steps at different rates; d * lr is -v.
    h = dict(reference.DEFAULTS["sgd"], lr=0.1, momentum=0.9, lr_in_momentum=True)
    s = {}
    reference.direction("sgd", g, p, s, h, 1)
    d, _, _ = reference.direction("sgd", 2 * g, p, s, dict(h, lr=0.01), 2)
    assert torch.allclose(0.01 * d, 0.9 * (0.1 * g) + 0.01 * 2 * g, rtol=1e-14)
    d0, _, _ = reference.direction("sgd", g, p, s, dict(h, lr=0.0), 3)
    assert torch.equal(d0, torch.zeros(3, dtype=torch.float64))  # lr 0: no rule can move theta


@pytest.mark.parametrize(
    "name,h", CASES, ids=[f"{n}-{'-'.join(k for k in FLAGS if h.get(k))}-{i}" for i, (n, h) in enumerate(CASES)]
)
def test_each_flag_changes_the_trajectory(name, h):
    """A flag that changed nothing here would make the server comparison below vacuous."""
    a, b = net(torch.float64), net(torch.float64)
    train(a, reference.Optimizer(a.parameters(), optimizer=name, rule="additive", **h), h["lr"])
    off = {**h, **{k: False for k in FLAGS if k in h}}
    train(b, reference.Optimizer(b.parameters(), optimizer=name, rule="additive", **off), h["lr"])
    assert (params(a) - params(b)).abs().max() > 1e-3


@needs_server
@pytest.mark.parametrize("backend", ["native", "wasm"])
@pytest.mark.parametrize("rule", ["additive", "hybrid"])
@pytest.mark.parametrize(
    "name,h", CASES, ids=[f"{n}-{'-'.join(k for k in FLAGS if h.get(k))}-{i}" for i, (n, h) in enumerate(CASES)]
)
def test_server_matches_the_reference_under_a_schedule(request, backend, rule, name, h):
    if backend == "native" and not ADDON.exists():
        pytest.skip("native engine not built")
    address = request.getfixturevalue(f"{backend}_server")
    extra = dict(gamma=0.5, lr_out=0.05) if rule == "hybrid" else {}
    a, b = net(), net(torch.float64)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer=name, rule=rule, server=address, **h, **extra)
    try:
        train(a, opt, h["lr"])
    finally:
        opt.close()
    train(b, reference.Optimizer(b.parameters(), optimizer=name, rule=rule, **h, **extra), h["lr"])
    # float32 server vs float64 reference, 20 steps: rounding (~1e-7 per op) only;
    # the flags move these parameters by > 1e-3 (test above).
    assert (params(a) - params(b)).abs().max() < 2e-5


@needs_server
def test_bad_flags_are_refused_and_leave_the_session_unchanged(server):
    a = net()
    with pytest.raises(ValueError, match="eps_in_sqrt"):
        mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", server=server, eps_in_sqrt=True)
    with pytest.raises((ValueError, TypeError), match="lr_in_momentum"):
        mur.RemoteOptimizer(
            a.parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1, momentum=0.9, lr_in_momentum="yes"
        )
    opt = mur.RemoteOptimizer(
        a.parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1, momentum=0.9, lr_in_momentum=True
    )
    try:
        before = params(a)
        opt.param_groups[0]["lr_in_momentum"] = False  # fixed at creation: the buffer would change meaning
        a(torch.ones(1, 5)).sum().backward()
        with pytest.raises(ValueError, match="lr_in_momentum"):
            opt.step()
        assert torch.equal(params(a), before)
        opt.param_groups[0]["lr_in_momentum"] = True
        opt.step()
        assert not torch.equal(params(a), before)
    finally:
        opt.close()


@needs_server
def test_a_torch_state_dict_loads_only_where_every_flag_is_off(server):
    """torch.optim has torch's formulas: its state_dict lacks the flags (off)."""
    a = net()
    ref = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    a(torch.ones(1, 5)).sum().backward()
    ref.step()
    sd = ref.state_dict()
    plain = mur.RemoteOptimizer(a.parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1, momentum=0.9)
    bridged = mur.RemoteOptimizer(
        a.parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1, momentum=0.9, lr_in_momentum=True
    )
    try:
        plain.load_state_dict(sd)
        assert torch.equal(plain.state[a[0].weight]["momentum_buffer"], sd["state"][0]["momentum_buffer"])
        with pytest.raises(ValueError, match="lr_in_momentum=True"):
            bridged.load_state_dict(sd)
    finally:
        plain.close()
        bridged.close()
