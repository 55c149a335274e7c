"""Row-sparse gradients (nn.Embedding(sparse=True)) on every transport:
torch.optim.SparseAdam, and SGD and Adagrad with sparse gradients, against
mur on grpc, tcp and shm, several steps from the same weights and batches;
the other rules against mur.reference; refusals that leave the session as
it was."""

import copy
import inspect

import pytest
import torch
from conftest import start_tcp, stop
from torch import nn

import mur
from mur import reference

ROWS, DIM, STEPS = 40, 6, 8
TRANSPORTS = ["grpc", "tcp", "shm"]


@pytest.fixture(scope="module")
def tcp_server():
    proc, info = start_tcp()
    assert info["data_port"] > 0
    yield f"127.0.0.1:{info['port']}"
    stop(proc)


@pytest.fixture
def address(server_for, request):
    def pick(transport):
        return request.getfixturevalue("tcp_server") if transport == "tcp" else server_for(transport)

    return pick


def embedding(seed=0):
    torch.manual_seed(seed)
    return nn.Embedding(ROWS, DIM, sparse=True)


def batch(t):
    """Indices with repeats (torch's gradient then has duplicate rows: the client coalesces them), never row 39."""
    g = torch.Generator().manual_seed(100 + t)
    idx = torch.randint(0, ROWS - 1, (12,), generator=g)
    return idx, torch.randn(12, DIM, generator=g)


def backward(m, t):
    idx, target = batch(t)
    m.zero_grad()
    ((m(idx) - target) ** 2).sum().backward()
    assert m.weight.grad.is_sparse


def train(m, opt, steps=STEPS):
    for t in range(steps):
        backward(m, t)
        opt.step()


# Tolerance: both sides compute in float32 with the same formula in the same
# order (torch's sparse_adam: m += (1-b1)(g-m), v += (1-b2)(g^2-v),
# theta -= step_size m / (sqrt(v) + eps)); the step sizes may differ by one
# ulp (lr sqrt(bc2) / bc1 grouped differently in double), so over 8 steps of
# |delta| <= lr the weights (|w| <= 4) agree within a few ulp: 2e-6. A
# missing bias correction or eps inside it (Adam's) moves them by >= 1e-4.
TOL = 2e-6

CASES = [
    ("sparseadam", lambda p: torch.optim.SparseAdam(p, lr=0.05), dict(lr=0.05)),
    (
        "sparseadam",
        lambda p: torch.optim.SparseAdam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, maximize=True),
        dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, maximize=True),
    ),
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05), dict(lr=0.05)),
    (
        "adagrad",
        lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
        dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
    ),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_torch_sparse_optimizers_match_mur(address, transport, case):
    name, make_torch, h = CASES[case]
    a = embedding()
    b = copy.deepcopy(a)
    start = a.weight.detach().clone()
    train(a, make_torch(a.parameters()))
    opt = mur.RemoteOptimizer(
        b.parameters(), optimizer=name, rule="additive", server=address(transport), transport=transport, **h
    )
    try:
        assert opt.transport == transport
        train(b, opt)
    finally:
        opt.close()
    diff = (a.weight - b.weight).abs().max().item()
    assert diff <= TOL, f"{name} on {transport}: max |torch - mur| = {diff}"
    assert (a.weight - start).abs().max().item() > 1e-2  # the rows moved
    # Row 39 was never in a batch: neither side touched it.
    assert torch.equal(b.weight[ROWS - 1], start[ROWS - 1])


@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
def test_rules_on_rows_match_the_reference(address, rule):
    """mur.reference (float64) against the server (float32, shm when it can):
    the rule applies to the touched rows only, the bound of exp_sign is the
    whole table's. Tolerance: float32 rounding over 8 steps of about ten
    elementwise ops, relative to |w| <= 4: 1e-5."""
    h = dict(lr=0.05, **({"lr_out": 0.05} if rule in ("multiplicative", "hybrid") else {}))
    a = embedding()
    ref = copy.deepcopy(a).double()
    start = a.weight.detach().clone()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="sparseadam", rule=rule, server=address("grpc"), **h)
    try:
        train(a, opt)
    finally:
        opt.close()
    train(ref, reference.Optimizer(ref.parameters(), optimizer="sparseadam", rule=rule, **h))
    diff = (a.weight.double() - ref.weight).abs().max().item()
    assert diff <= 1e-5, f"{rule}: max |server - reference| = {diff}"
    assert (ref.weight.float() - start).abs().max().item() > 1e-3
    assert torch.equal(a.weight[ROWS - 1], start[ROWS - 1])


def test_refusals_name_the_reason_and_change_nothing(address):
    m = embedding()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="sparseadam", rule="additive", server=address("grpc"), lr=0.05)
    try:
        backward(m, 0)
        opt.step()
        after_one = m.weight.detach().clone()
        # A dense gradient: torch's SparseAdam refuses it too.
        m.weight.grad = torch.ones(ROWS, DIM)
        with pytest.raises(mur.InvalidArgumentError, match="row-sparse gradients only"):
            opt.step()
        assert torch.equal(m.weight, after_one)
        # A non-finite value in a sparse gradient.
        bad = torch.sparse_coo_tensor([[3, 5]], torch.tensor([[1.0] * DIM, [float("nan")] * DIM]), (ROWS, DIM))
        m.weight.grad = bad
        with pytest.raises(mur.InvalidArgumentError, match=r"must be finite"):
            opt.step()
        assert torch.equal(m.weight, after_one)
        # The session is as it was: the next step is torch's second step.
        twin = embedding()
        topt = torch.optim.SparseAdam(twin.parameters(), lr=0.05)
        train(twin, topt, steps=2)
        backward(m, 1)
        opt.step()
        assert (m.weight - twin.weight).abs().max().item() <= TOL
    finally:
        opt.close()


@pytest.mark.parametrize(
    "name, h, why",
    [
        ("adam", {}, "adam does not take row-sparse gradients"),
        ("sgd", dict(lr=0.1, momentum=0.9), "momentum"),
        ("adagrad", dict(weight_decay=0.1), "weight_decay"),
    ],
)
def test_optimizers_that_refuse_sparse_gradients_say_why(address, name, h, why):
    m = embedding()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer=name, rule="additive", server=address("grpc"), **h)
    try:
        before = m.weight.detach().clone()
        backward(m, 0)
        with pytest.raises(mur.InvalidArgumentError, match=why):
            opt.step()
        assert torch.equal(m.weight, before)
    finally:
        opt.close()


def test_defaults_are_torchs(address):
    """One set of defaults: torch.optim.SparseAdam's signature, the server's table and mur.reference."""
    opt = mur.RemoteOptimizer(embedding().parameters(), optimizer="sparseadam", rule="additive", server=address("grpc"))
    try:
        group = opt.param_groups[0]
        want = {k: p.default for k, p in inspect.signature(torch.optim.SparseAdam).parameters.items()}
        for k, v in reference.DEFAULTS["sparseadam"].items():
            assert group[k] == pytest.approx(v), k
            assert v == pytest.approx(tuple(want[k]) if isinstance(want[k], tuple) else want[k]), k
    finally:
        opt.close()


def test_state_dict_loads_into_torch_sparse_adam(address):
    """The checkpoint is torch's format: torch.optim.SparseAdam takes it and steps on as the server does."""
    a = embedding()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="sparseadam", rule="additive", server=address("grpc"), lr=0.05)
    try:
        train(a, opt, steps=3)
        b = embedding()
        b.load_state_dict(a.state_dict())
        theirs = torch.optim.SparseAdam(b.parameters(), lr=0.05)
        theirs.load_state_dict(opt.state_dict())
        backward(a, 5)
        opt.step()
        backward(b, 5)
        theirs.step()
        assert (a.weight - b.weight).abs().max().item() <= TOL
    finally:
        opt.close()
