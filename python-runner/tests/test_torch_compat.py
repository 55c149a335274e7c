"""torch 2.x integration: no-op constructor flags, maximize, decoupled_weight_decay,
SGD's default lr, copy/pickle, dynamo, opt.state and torch.optim state_dict
interoperability, on both transports where it matters."""

import copy
import inspect
import io
import pickle
from pathlib import Path

import pytest
import torch
from conftest import max_diff, net

import mur

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
ADDON = ROOT / "ts-server" / "native" / "build" / "Release" / "mur_native.node"
pytestmark = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
TRANSPORTS = ["grpc", "shm"]
TORCH = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "radam": "RAdam",
    "adadelta": "Adadelta",
    "rprop": "Rprop",
    "asgd": "ASGD",
}


def remote(params, server_for, transport, **kw):
    opt = mur.RemoteOptimizer(params, server=server_for(transport), transport=transport, **kw)
    assert opt.transport == transport
    return opt


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)) for _ in range(n)]


def train(model, opt, steps, start=0, set_to_none=True, on_grad=None):
    for x, y in batches(start + steps)[start:]:
        opt.zero_grad(set_to_none=set_to_none)
        torch.nn.functional.mse_loss(model(x), y).backward()
        if on_grad:
            on_grad()
        opt.step()


# -- 1. torch 2.x constructor arguments ------------------------------------------
def test_torch_flags_are_accepted_and_change_nothing(server):
    a, b = net(), net()
    flags = dict(foreach=None, fused=False, capturable=False, differentiable=False)
    oa = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01, **flags)
    ob = mur.RemoteOptimizer(
        b.parameters(),
        optimizer="adam",
        rule="additive",
        server=server,
        lr=0.01,
        foreach=True,
        fused=True,
        capturable=True,  # CPU parameters: capturable has no effect
        differentiable=None,
    )
    assert oa.param_groups[0]["foreach"] is None and ob.param_groups[0]["fused"] is True
    train(a, oa, 4)
    train(b, ob, 4)
    assert max_diff(a, b) == 0
    oa.close()
    ob.close()
    with pytest.raises(ValueError, match="differentiable=True: mur does not support"):
        mur.RemoteOptimizer(net().parameters(), optimizer="adam", server=server, differentiable=True)
    with pytest.raises(ValueError, match="foreach='yes'"):
        mur.RemoteOptimizer(net().parameters(), optimizer="adam", server=server, foreach="yes")
    with pytest.raises(ValueError, match="decoupled_weight_decay=True: not an argument of sgd"):
        mur.RemoteOptimizer(net().parameters(), optimizer="sgd", server=server, decoupled_weight_decay=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_maximize_equals_torch_and_leaves_the_users_grad_alone(server_for, transport):
    a, b = net(), net()
    oa = remote(a.parameters(), server_for, transport, optimizer="adam", rule="additive", lr=0.01, maximize=True)
    ob = torch.optim.Adam(b.parameters(), lr=0.01, maximize=True)
    seen = []

    def keep():  # the user's gradients, as backward left them
        seen.append([p.grad.detach().clone() for p in a.parameters()])

    train(a, oa, 3, on_grad=keep)
    train(b, ob, 3)
    assert max_diff(a, b) < 1e-6
    assert all(torch.equal(p.grad, g) for p, g in zip(a.parameters(), seen[-1])), "p.grad's sign is untouched"
    # Toggled after plain steps (on shm p.grad is then the arena's gradient view
    # and backward accumulates into it): the sign is flipped for the step only.
    for o in (oa, ob):
        o.param_groups[0]["maximize"] = False
    train(a, oa, 2, start=3, set_to_none=False)
    train(b, ob, 2, start=3, set_to_none=False)
    for o in (oa, ob):
        o.param_groups[0]["maximize"] = True
    seen.clear()
    train(a, oa, 2, start=5, set_to_none=False, on_grad=keep)
    train(b, ob, 2, start=5, set_to_none=False)
    assert all(torch.equal(p.grad, g) for p, g in zip(a.parameters(), seen[-1])), "p.grad's sign is untouched"
    assert max_diff(a, b) < 1e-5
    oa.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_gradient_tensor_shared_by_parameters_with_and_without_maximize(server_for, transport):
    """p.grad objects shared between parameters, one of them (on shm) another
    parameter's arena gradient, with maximize on the group of one: each
    parameter steps on its own sign of the same values, as torch's Adam."""
    torch.manual_seed(0)
    init = [torch.randn(3, 4) for _ in range(2)]
    mine = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    groups = lambda ps: [{"params": [ps[0]]}, {"params": [ps[1]], "maximize": False}]  # noqa: E731
    oa = remote(groups(mine), server_for, transport, optimizer="adam", rule="additive", lr=0.01)
    ob = torch.optim.Adam(groups(theirs), lr=0.01)
    for step in range(6):
        g = torch.randn(3, 4)
        if step == 3:  # from here on the second parameter's group maximizes
            for o in (oa, ob):
                o.param_groups[1]["maximize"] = True
        for ps in (mine, theirs):
            if step == 0:  # one tensor as both gradients
                ps[0].grad = ps[1].grad = g.clone()
            else:  # the first takes the second's p.grad (on shm, after a plain step, its arena gradient)
                ps[1].grad.copy_(g)
                ps[0].grad = ps[1].grad
        before = mine[1].grad.clone()
        oa.step()
        ob.step()
        assert torch.equal(mine[1].grad, before), "the shared gradient is as the user left it"
        # float32 rounding of the server's kernel against torch's: 1e-6 over 6 steps of size ~0.01
        assert max((p - q).abs().max().item() for p, q in zip(mine, theirs)) < 1e-6, step
    oa.close()


def test_decoupled_weight_decay_makes_adam_adamw(server):
    a, b = net(), net()
    oa = mur.RemoteOptimizer(
        a.parameters(),
        optimizer="adam",
        rule="additive",
        server=server,
        lr=0.01,
        weight_decay=0.1,
        decoupled_weight_decay=True,
    )
    assert oa.optimizer_name == "adamw"
    train(a, oa, 10)
    train(b, torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1), 10)
    assert max_diff(a, b) < 1e-6
    oa.close()
    for name in ("nadam", "radam"):
        with pytest.raises(ValueError, match="decoupled_weight_decay=1: must be True or False"):
            mur.RemoteOptimizer(net().parameters(), optimizer=name, server=server, decoupled_weight_decay=1)


@pytest.mark.skipif(
    "decoupled_weight_decay" not in inspect.signature(torch.optim.NAdam).parameters,
    reason=f"torch {torch.__version__} NAdam and RAdam have no decoupled_weight_decay (torch >= 2.2)",
)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["nadam", "radam"])
def test_decoupled_weight_decay_of_nadam_and_radam_is_torchs(server_for, transport, name):
    a, b = net(), net()
    h = dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    oa = remote(a.parameters(), server_for, transport, optimizer=name, rule="additive", **h)
    assert oa.optimizer_name == name and oa.param_groups[0]["decoupled_weight_decay"] is True
    train(a, oa, 10)
    train(b, getattr(torch.optim, TORCH[name])(b.parameters(), **h), 10)
    assert max_diff(a, b) < 1e-6
    # Switched off mid-run in the group, as torch allows: the next steps couple the decay again.
    oa.param_groups[0]["decoupled_weight_decay"] = False
    tb = getattr(torch.optim, TORCH[name])(b.parameters(), **h)
    tb.load_state_dict(oa.state_dict())
    tb.param_groups[0]["decoupled_weight_decay"] = False
    train(a, oa, 5, start=10)
    train(b, tb, 5, start=10)
    assert max_diff(a, b) < 1e-6
    oa.close()


# -- 2. SGD's lr ----------------------------------------------------------------------
def test_sgd_lr_defaults_to_torchs(server):
    a, b = net(), net()
    oa = mur.RemoteOptimizer(a.parameters(), optimizer="sgd", rule="additive", server=server, momentum=0.9)
    assert oa.param_groups[0]["lr"] == 1e-3
    train(a, oa, 5)
    train(b, torch.optim.SGD(b.parameters(), lr=1e-3, momentum=0.9), 5)
    assert max_diff(a, b) < 1e-6
    oa.close()
    c = net()  # the rule never uses lr: nothing to give
    oc = mur.RemoteOptimizer(
        c.parameters(), optimizer="sgd", rule="multiplicative", server=server, lr_in=1.0, lr_out=0.01
    )
    train(c, oc, 2)
    oc.close()


# -- 3. copies, pickles, dynamo -----------------------------------------------------
def test_copy_and_pickle_raise_a_clear_type_error(server):
    opt = mur.RemoteOptimizer(net().parameters(), optimizer="adam", server=server)
    for f in (copy.deepcopy, copy.copy, pickle.dumps):
        with pytest.raises(TypeError, match=r"live server session.*state_dict"):
            f(opt)
    with pytest.raises(TypeError, match="live server session"):
        torch.save(opt, io.BytesIO())
    opt.close()


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch < 2: no torch.compile")
def test_step_is_not_traced_by_dynamo(server):
    a, b = net(), net()
    oa = mur.RemoteOptimizer(
        a.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01, transport="grpc"
    )
    ob = mur.RemoteOptimizer(
        b.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01, transport="grpc"
    )
    tracing, real = [], oa._plane.step

    def spy(*args):
        tracing.append(torch.compiler.is_compiling())  # True only while dynamo traces this code
        return real(*args)

    oa._plane.step = spy
    step = torch.compile(oa.step, backend="eager")
    model = torch.compile(a, backend="eager")
    for x, y in batches(3):
        oa.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        step()
    train(b, ob, 3)
    assert tracing == [False] * 3, "the step ran eagerly"
    assert max_diff(a, b) == 0
    oa.close()
    ob.close()


# -- 4. opt.state ----------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_state_shows_the_servers_state_torch_style(server_for, transport):
    a, b = net(), net()
    oa = remote(a.parameters(), server_for, transport, optimizer="adam", rule="additive", lr=0.01, amsgrad=True)
    ob = torch.optim.Adam(b.parameters(), lr=0.01, amsgrad=True)
    assert len(oa.state) == 0
    train(a, oa, 3)
    train(b, ob, 3)
    state = oa.state
    assert len(state) == len(list(a.parameters()))
    for p, q in zip(a.parameters(), b.parameters()):
        s, t = state[p], ob.state[q]
        assert set(s) == set(t) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        assert float(s["step"]) == 3.0
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert s[k].shape == p.shape and (s[k] - t[k]).abs().max().item() < 1e-6
    oa.zero_grad()
    sd = oa.state_dict()  # torch's packing of self.state: the server's state, torch-style
    assert float(sd["state"][0]["step"]) == 3.0 and "mur" in sd
    if hasattr(oa, "register_state_dict_post_hook"):  # torch >= 2.1: hooks see the state
        seen = []
        oa.register_state_dict_post_hook(lambda opt, d: seen.append(sorted(d["state"][0])))
        oa.state_dict()
        assert seen == [["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]]
    oa.close()
    assert len(oa.state) == 0  # closed: no server state to show


# -- 5. torch.optim state_dicts --------------------------------------------------------
CASES = [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("adamw", dict(lr=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("adagrad", dict(lr=0.05)),
    ("adadelta", dict(lr=1.0)),
    ("adamax", dict(lr=0.01)),
    ("nadam", dict(lr=0.01)),
    ("radam", dict(lr=0.01)),
    ("rprop", dict(lr=0.01)),
    ("rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.1))),
    ("asgd", dict(lr=0.05, t0=5, lambd=0.01)),
    ("nadam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("radam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name,h", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_torch_state_dict_moves_both_ways(server_for, transport, name, h):
    if name == "nadam" and int(torch.__version__.split(".")[0]) < 2:
        pytest.skip("torch 1.13's NAdam differs from torch 2.x's, which mur follows (5e-5 after 10 steps)")
    cls = getattr(torch.optim, TORCH[name])
    absent = [k for k in h if k not in inspect.signature(cls).parameters]
    if absent:
        pytest.skip(f"torch {torch.__version__} {cls.__name__} has no {', '.join(absent)} (torch >= 2.2)")
    ref = net()
    train(ref, cls(ref.parameters(), **h), 20)  # uninterrupted

    # torch -> mur
    a = net()
    ta = cls(a.parameters(), **h)
    train(a, ta, 10)
    oa = remote(a.parameters(), server_for, transport, optimizer=name, rule="additive", **h)
    oa.load_state_dict(ta.state_dict())
    train(a, oa, 10, start=10)
    assert max_diff(a, ref) < 1e-6
    oa.close()

    # mur -> torch
    b = net()
    ob = remote(b.parameters(), server_for, transport, optimizer=name, rule="additive", **h)
    train(b, ob, 10)
    buf = io.BytesIO()
    torch.save(ob.state_dict(), buf)
    ob.close()
    buf.seek(0)
    tb = cls(b.parameters(), **h)
    tb.load_state_dict(torch.load(buf))
    train(b, tb, 10, start=10)
    assert max_diff(b, ref) < 1e-6


def test_another_algorithms_state_dict_is_refused(server):
    a = net()
    sgd = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    train(a, sgd, 2)
    radam = torch.optim.RAdam(a.parameters())
    train(a, radam, 2)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", server=server, lr=0.01)
    with pytest.raises(
        ValueError,
        match=r"not the state_dict of a adam optimizer \(it has dampening, momentum, "
        r"nesterov; it lacks amsgrad, betas, eps\)",
    ):
        opt.load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="lacks amsgrad"):
        opt.load_state_dict(radam.state_dict())
    assert opt.param_groups[0]["lr"] == 0.01 and len(opt.state) == 0, "nothing changed"
    opt.close()
    # Adamax and RAdam share their hyperparameters; the server refuses the slots.
    ox = mur.RemoteOptimizer(a.parameters(), optimizer="adamax", rule="additive", server=server)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        ox.load_state_dict(radam.state_dict())
    ox.close()


def test_a_torch_state_dict_keeps_murs_own_hyperparameters(server):
    a = net()
    ta = torch.optim.Adam(a.parameters(), lr=0.02)
    train(a, ta, 3)
    opt = mur.RemoteOptimizer(
        a.parameters(), optimizer="adam", rule="hybrid", server=server, lr=0.01, lr_in=0.7, gamma=0.5
    )
    opt.load_state_dict(ta.state_dict())
    g = opt.param_groups[0]
    assert (g["lr"], g["lr_in"], g["gamma"]) == (0.02, 0.7, 0.5), "torch's values, mur's own keys kept"
    assert float(opt.state[next(iter(a.parameters()))]["step"]) == 3.0
    train(a, opt, 2, start=3)
    assert float(opt.state_dict()["state"][0]["step"]) == 5.0
    opt.close()
