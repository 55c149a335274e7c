"""mur.schedulers: gamma schedules for the hybrid rule, used like torch's
lr_scheduler; the server receives every gamma they set."""

import io
import math
import random

import pytest
import torch

import mur
from mur import reference
from mur.schedulers import ExponentialGammaDecay, InverseExponentialGamma, RandomGamma


def _ref(gamma=0.8, groups=1):
    """A hybrid optimizer without a server: the schedulers only touch param_groups."""
    params = [{"params": [torch.nn.Parameter(torch.ones(2))]} for _ in range(groups)]
    return reference.Optimizer(params, optimizer="sgd", rule="hybrid", lr=0.1, gamma=gamma)


def _run(sched, metrics):
    out = []
    for m in metrics:
        sched.step(m)
        out.append(sched.get_last_gamma()[0])
    return out


def test_exponential_decay_per_step_after_patience():
    opt = _ref(0.8)
    s = ExponentialGammaDecay(opt, factor=0.5, patience=2, min_gamma=0.06)
    assert s.get_last_gamma() == [0.8]
    # Steps 1, 2: patience; then 0.4, 0.2, 0.1, then the floor 0.06.
    assert _run(s, [None] * 7) == [0.8, 0.8, 0.4, 0.2, 0.1, 0.06, 0.06]
    assert opt.param_groups[0]["gamma"] == 0.06


def test_exponential_decay_on_a_plateau():
    opt = _ref(0.8)
    s = ExponentialGammaDecay(opt, factor=0.5, patience=1)
    # loss: best 3, 2; then 2.5 (bad 1), 2.2 (bad 2 > 1: decay, reset), 1 (best), 1 (bad 1), 1 (bad 2: decay)
    got = _run(s, [3, 2, 2.5, 2.2, 1, 1, 1])
    assert got == [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2]
    high = ExponentialGammaDecay(_ref(0.8), factor=0.5, patience=0, mode="max")  # an accuracy: higher is better
    assert _run(high, [0.5, 0.6, 0.55]) == [0.8, 0.8, 0.4]


def test_inverse_grows_toward_one():
    opt = _ref(0.2)
    s = InverseExponentialGamma(opt, factor=0.5, patience=1, max_gamma=0.95)
    # 1 - gamma halves after the first (patience) step: 0.8 -> 0.4 -> 0.2 -> 0.1 -> 0.05 (max 0.95)
    got = _run(s, [None] * 6)
    want = [0.2, 0.6, 0.8, 0.9, 0.95, 0.95]
    assert all(math.isclose(g, w, rel_tol=1e-12) for g, w in zip(got, want)), got


def test_random_gamma_is_seeded_and_in_range():
    s = RandomGamma(_ref(), low=0.3, high=0.7, seed=42)
    got = [s.get_last_gamma()[0]] + _run(s, [None] * 5)
    rng = random.Random(42)
    assert got == [0.3 + (0.7 - 0.3) * rng.random() for _ in range(6)]
    other = RandomGamma(_ref(), low=0.3, high=0.7, seed=43)
    assert other.get_last_gamma()[0] != got[0]


def test_every_group_gets_the_scheduled_gamma():
    opt = _ref(0.8, groups=2)
    opt.param_groups[1]["gamma"] = 0.4
    s = ExponentialGammaDecay(opt, factor=0.5)
    s.step()
    assert s.get_last_gamma() == [0.4, 0.2] == [g["gamma"] for g in opt.param_groups]
    assert s.base_gammas == [0.8, 0.4]


@pytest.mark.parametrize(
    "make",
    [
        lambda o: ExponentialGammaDecay(o, factor=0.7, patience=2, min_gamma=0.1),
        lambda o: InverseExponentialGamma(o, factor=0.7, patience=1),
        lambda o: RandomGamma(o, low=0.1, high=0.9, seed=5),
    ],
)
@pytest.mark.parametrize("metric", [False, True])
def test_state_dict_round_trip_resumes_the_sequence(make, metric):
    metrics = [5, 4, 4, 4.5, 4, 3, 3, 3, 3, 3] if metric else [None] * 10
    whole = make(_ref(0.5))
    full = _run(whole, metrics)
    first = make(_ref(0.5))
    head = _run(first, metrics[:4])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make(_ref(0.5))  # a fresh scheduler (RandomGamma: it drew its own first gamma)
    resumed.load_state_dict(torch.load(buf))
    assert resumed.get_last_gamma() == [head[-1]] and resumed.optimizer.param_groups[0]["gamma"] == head[-1]
    assert head + _run(resumed, metrics[4:]) == full


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"factor=1\.5: must be in \(0, 1\)"):
        ExponentialGammaDecay(_ref(), factor=1.5)
    with pytest.raises(ValueError, match=r"patience=-1"):
        ExponentialGammaDecay(_ref(), patience=-1)
    with pytest.raises(ValueError, match=r"min_gamma=2"):
        ExponentialGammaDecay(_ref(), min_gamma=2)
    with pytest.raises(ValueError, match=r"mode='up'"):
        InverseExponentialGamma(_ref(), mode="up")
    with pytest.raises(ValueError, match=r"low=0\.8 > high=0\.2"):
        RandomGamma(_ref(), low=0.8, high=0.2)
    with pytest.raises(ValueError, match=r"metric=nan"):
        ExponentialGammaDecay(_ref()).step(float("nan"))
    additive = reference.Optimizer([torch.nn.Parameter(torch.ones(1))], optimizer="sgd", rule="additive", lr=0.1)
    with pytest.raises(ValueError, match=r"rule='hybrid'.*'additive'"):
        RandomGamma(additive)
    # A refused construction leaves the optimizer's gamma as it was.
    opt = _ref(0.8)
    with pytest.raises(ValueError):
        RandomGamma(opt, low=0.9, high=0.1)
    assert opt.param_groups[0]["gamma"] == 0.8


def _train(opt, model, steps, each=None):
    torch.manual_seed(3)
    xs, ys = torch.randn(steps, 8, 4), torch.randn(steps, 8, 2)
    for k in range(steps):
        if each is not None:
            each(k)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs[k]), ys[k]).backward()
        opt.step()


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: ExponentialGammaDecay(o, factor=0.6, patience=1),
        lambda o: RandomGamma(o, low=0.0, high=1.0, seed=11),
    ],
)
def test_the_server_receives_the_scheduled_gamma(server, make):
    """A hybrid run with the scheduler equals, bit for bit, a run where gamma
    is set by hand before each step; a run with a constant gamma differs."""
    steps = 8
    a, b, c = _model(), _model(), _model()
    hypers = dict(optimizer="adam", rule="hybrid", server=server, transport="grpc", lr=0.05, lr_out=0.05, gamma=0.9)
    oa, ob, oc = (mur.RemoteOptimizer(m.parameters(), **hypers) for m in (a, b, c))
    try:
        sched = make(oa)
        gammas = []

        def scheduled(k):
            if k:
                sched.step()  # after the previous optimizer.step(), as torch's schedulers
            gammas.append(oa.param_groups[0]["gamma"])

        _train(oa, a, steps, scheduled)
        assert len(set(gammas)) > 2, gammas  # the schedule really moved gamma
        _train(ob, b, steps, lambda k: ob.param_groups[0].__setitem__("gamma", gammas[k]))
        _train(oc, c, steps)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert not torch.equal(a.weight, c.weight)
    finally:
        for o in (oa, ob, oc):
            o.close()
