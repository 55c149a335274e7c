"""overlap=True on the shm transport (mur/planes/hot.py, the lane's queue in
ts-server/native/src/lane.cc): gradients moved into the arena by a
post-accumulate-grad hook as backward makes them and checked by the server
while hot, and each update staged there (speculation) and committed by the
step where it still stands. Every case is held to overlap=False: the same
bits, the same refusals, nothing applied by a refused step.

torch >= 2.1 only (the hook); on torch 1.13 overlap does nothing, which the
last test checks there. Every optimizer and server a test makes is freed by it."""

import copy

import numpy as np
import pytest
import torch
from conftest import batches, bits, max_diff, net, same_bits

import mur
from mur.planes.base import is_view_of
from mur.planes.hot import HAS_HOOK
from mur.planes.shm import _UNCHANGED

needs_hook = pytest.mark.skipif(
    not HAS_HOOK, reason="torch < 2.1 has no Tensor.register_post_accumulate_grad_hook: overlap does nothing there"
)

SIZES = (5, 16, 16, 2)  # three layers: six tensors


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def run(server, overlap, steps=6, edit=None, micro=1, loss=loss_of, opt_kw=None, groups=None, settle=None):
    """A model trained `steps` steps through mur with `overlap`, `micro`
    backwards per step; `edit(model, opt)` runs after backward, before
    step(); `settle` ("each" or "first" micro-batch): wait there until the
    lane has checked (and speculated on) every queued gradient. (bits of the
    parameters, the optimizer's state_dict, the lane steps, the parameters
    the last backward queued on the lane, the lane's (speculations made,
    committed) during the run)."""
    model = net(3, sizes=SIZES)
    kw = {"optimizer": "adam", "rule": "additive", "lr": 0.01, **(opt_kw or {})}
    opt = mur.RemoteOptimizer(
        groups(model) if groups else model.parameters(), server=server, transport="shm", overlap=overlap, **kw
    )
    try:
        assert opt.overlap is overlap
        data, queued = batches(steps * micro, seed=5), []
        lane = opt._plane.arena.lane
        spec0 = lane.speculations
        for k in range(steps):
            opt.zero_grad()
            for j, (x, y) in enumerate(data[k * micro : (k + 1) * micro]):
                loss(model, x, y).backward()
                if overlap and (settle == "each" or (settle == "first" and j == 0)):
                    wait_checked(opt)
            queued = sorted(pid for pid, m in opt._plane.hot._marks.items() if m.queued) if overlap else []
            if edit:
                edit(model, opt)
            opt.step()
        spec = tuple(b - a for a, b in zip(spec0, lane.speculations))
        return bits(model), opt.state_dict(), opt.lane_steps, queued, spec
    finally:
        opt.close()


def same_state(a, b, steps=True):
    """Two state_dicts' tensors equal bit for bit (and their step counts:
    a refused step keeps its number, the client's next step uses the next)."""
    assert not steps or a["mur"]["step"] == b["mur"]["step"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, v in a["state"][k].items():
            w = b["state"][k][name]
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(w)), (k, name)
    return True


def wait_checked(opt):
    """Until the server's lane has taken (and scanned) every queued gradient."""
    # Lane.drain wakes it first: small gradients do not wake a sleeping lane on their own.
    assert opt._plane.arena.lane.drain(30), "the lane did not take the queued gradients"


@pytest.fixture
def shm(server_for):
    return server_for("shm")


@needs_hook
@pytest.mark.parametrize(
    "opt_kw",
    [{"optimizer": "adam"}, {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05}],
    ids=["adam", "sgd-momentum"],
)
def test_overlap_gives_the_same_bits_as_without_and_checks_while_hot(shm, opt_kw):
    on = run(shm, True, opt_kw=opt_kw)
    off = run(shm, False, opt_kw=opt_kw)
    assert same_bits(on[0], off[0])
    assert same_state(on[1], off[1])
    assert on[2] >= 4 and off[2] >= 4, "both took the fast lane after the first step"
    # The last backward queued every gradient on the armed lane.
    assert on[3] == [f"p0.{i}" for i in range(6)], on[3]


@needs_hook
def test_p_grad_is_the_arena_view_with_backward_s_values(shm):
    """After backward p.grad is the arena's gradient view (float32), holding
    what torch computed; zero_grad() makes it None again."""
    model, ref = net(3, sizes=SIZES), net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=shm, overlap=True)
    try:
        assert opt.transport == "shm" and opt.overlap
        x, y = batches(1, seed=2)[0]
        loss_of(model, x, y).backward()
        loss_of(ref, x, y).backward()
        for (pid, (_, _, gv)), p, q in zip(sorted(opt._plane.views.items()), model.parameters(), ref.parameters()):
            assert is_view_of(p.grad, gv), pid
            assert torch.equal(p.grad, q.grad)
        opt.step()
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    finally:
        opt.close()


@needs_hook
def test_accumulation_over_two_micro_batches(shm):
    """The second backward accumulates into the arena view; the step sees the sum."""
    on, off = run(shm, True, micro=2), run(shm, False, micro=2)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[3], "the second backward queued its gradients again"


@needs_hook
def test_clip_grad_norm_after_backward(shm):
    def clip(model, _):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)

    on, off = run(shm, True, edit=clip), run(shm, False, edit=clip)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])


@needs_hook
def test_an_in_place_unscale_like_grad_scaler(shm):
    """Backward of a scaled loss, then every p.grad divided in place (what
    GradScaler.unscale_ does): the step uses the unscaled values."""

    def unscale(model, _):
        for p in model.parameters():
            p.grad.mul_(1.0 / 1024)

    def scaled(model, x, y):
        return loss_of(model, x, y) * 1024

    on, off = run(shm, True, edit=unscale, loss=scaled), run(shm, False, edit=unscale, loss=scaled)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])


def _refused_step_changes_nothing(opt, model, before, state):
    with pytest.raises(mur.InvalidArgumentError, match="NaN"):
        opt.step()
    assert same_bits(bits(model), before)
    assert same_state(opt.state_dict(), state, steps=False)


@needs_hook
@pytest.mark.parametrize("where", ["in-place edit after backward", "backward itself"])
def test_a_nan_refuses_the_step_and_nothing_is_applied(shm, where):
    """A NaN gradient, whether a p.grad edit made it after its hot check
    (the version counter tells) or backward computed it: the step is refused
    with the usual error, parameters and state stay as they were, and the
    next clean step goes through."""
    model = net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=True)
    try:
        data = batches(4, seed=6)
        for x, y in data[:3]:  # past the first step: the lane is armed and checks while hot
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
        before, state = bits(model), opt.state_dict()  # before backward: an export disarms the lane
        opt.zero_grad()
        x, y = data[3]
        if where == "backward itself":
            x = x.clone()
            x[0, 0] = float("nan")
        loss_of(model, x, y).backward()
        assert all(m.queued for m in opt._plane.hot._marks.values())
        first = next(model.parameters())
        if where != "backward itself":
            wait_checked(opt)  # checked clean while hot, then edited:
            first.grad[1, 2] = float("nan")  # in place, the arena view's version moves
        _refused_step_changes_nothing(opt, model, before, state)
        before = bits(model)
        opt.zero_grad()
        loss_of(model, *data[0]).backward()
        opt.step()
        assert not same_bits(bits(model), before), "the next clean step is applied"
    finally:
        opt.close()


@needs_hook
def test_maximize_steps_on_minus_grad_and_p_grad_keeps_its_sign(shm):
    seen = []

    def look(model, _):
        seen.append([p.grad.clone() for p in model.parameters()])

    on = run(shm, True, edit=look, opt_kw={"maximize": True})
    grads_on, seen[:] = list(seen), []
    off = run(shm, False, edit=look, opt_kw={"maximize": True})
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    for a, b in zip(grads_on, seen):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


@needs_hook
def test_a_bfloat16_parameter(shm):
    """A bf16 layer beside float32 ones: the hook casts its gradient into the
    arena's float32 region; p.grad stays the user's bf16 tensor."""

    def half_last(model):
        model[-1].to(torch.bfloat16)
        return [
            {"params": list(model[0].parameters()) + list(model[2].parameters())},
            {"params": list(model[-1].parameters())},
        ]

    def mixed_loss(model, x, y):
        h = model[3](model[2](model[1](model[0](x))))
        return torch.nn.functional.mse_loss(model[4](h.to(torch.bfloat16)).float(), y)

    def check_dtype(model, opt):
        assert model[-1].weight.grad.dtype == torch.bfloat16
        if opt.overlap:
            wait_checked(opt)
        model[-1].weight.grad.mul_(0.5)  # an edit of the user's bf16 gradient after the hook cast it

    on = run(shm, True, groups=half_last, edit=check_dtype, loss=mixed_loss)
    off = run(shm, False, groups=half_last, edit=check_dtype, loss=mixed_loss)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert "p1.0" in on[3], "the bf16 gradient was cast and queued"


@needs_hook
def test_add_param_group_hooks_the_new_parameters(shm):
    results = []
    for overlap in (True, False):
        model = net(3, sizes=SIZES)
        frozen = list(model[-1].parameters())
        opt = mur.RemoteOptimizer(
            [p for p in model.parameters() if all(p is not q for q in frozen)],
            optimizer="adam",
            rule="additive",
            lr=0.01,
            server=shm,
            overlap=overlap,
        )
        try:
            for k, (x, y) in enumerate(batches(6, seed=8)):
                if k == 2:
                    opt.add_param_group({"params": frozen, "lr": 0.02})
                opt.zero_grad()
                loss_of(model, x, y).backward()
                if overlap and k >= 3:
                    assert {"p1.0", "p1.1"} <= set(opt._plane.hot._marks), "the new group's gradients moved early"
                    assert is_view_of(frozen[0].grad, opt._plane.views["p1.0"][2])
                    wait_checked(opt)
                opt.step()
            results.append((bits(model), opt.state_dict(), opt.speculations))
        finally:
            opt.close()
    assert same_bits(results[0][0], results[1][0]) and same_state(results[0][1], results[1][1])
    assert results[0][2][1] >= 8, "the new arena's lane staged and committed the new group's updates too"


@needs_hook
def test_an_unused_parameter_is_not_stepped(shm):
    model = net(3, sizes=SIZES)
    extra = torch.nn.Parameter(torch.ones(3))
    opt = mur.RemoteOptimizer(
        [*model.parameters(), extra], optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=True
    )
    try:
        for x, y in batches(4, seed=9):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            assert extra.grad is None
            opt.step()
        assert torch.equal(extra.detach(), torch.ones(3))
        assert 6 not in opt.state_dict()["state"], "no state: never stepped"
    finally:
        opt.close()


@needs_hook
def test_a_state_dict_round_trip_continues_the_same_trajectory(shm):
    data = batches(8, seed=10)

    def train(model, opt, part):
        for x, y in part:
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()

    whole = net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(whole.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=True)
    try:
        train(whole, opt, data)
    finally:
        opt.close()
    a = net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=True)
    try:
        train(a, opt, data[:4])
        ck = copy.deepcopy({"model": a.state_dict(), "opt": opt.state_dict()})
    finally:
        opt.close()
    b = net(0, sizes=SIZES)
    b.load_state_dict(ck["model"])
    opt = mur.RemoteOptimizer(b.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=True)
    try:
        opt.load_state_dict(ck["opt"])
        train(b, opt, data[4:])
    finally:
        opt.close()
    assert same_bits(b, whole)


@needs_hook
def test_close_removes_the_hooks_and_a_model_copy_does_not_write_the_arena(shm):
    model = net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=shm, overlap=True)
    assert all(p._post_accumulate_grad_hooks for p in model.parameters())
    try:
        x, y = batches(1, seed=11)[0]
        twin = copy.deepcopy(model)
        loss_of(twin, x, y).backward()
        assert all(p.grad is None for p in model.parameters())
        assert all(not is_view_of(q.grad, gv) for q, (_, _, gv) in zip(twin.parameters(), opt._plane.views.values()))
        assert all(not torch.any(gv) for _, _, gv in opt._plane.views.values()), "the arena's gradients are untouched"
    finally:
        opt.close()
    loss_of(model, x, y).backward()  # after close: torch's own gradients, no hook left
    assert all(p.grad is not None and not p._post_accumulate_grad_hooks for p in model.parameters())


@needs_hook
def test_the_lane_skips_the_scan_only_of_a_checked_and_unchanged_gradient(shm):
    """The queue's protocol, driven by hand: a gradient queued and checked
    clean, then made NaN behind torch's back (numpy on the arena memory,
    which the documentation says is not seen), is stepped when its index
    carries _UNCHANGED and refused when it does not."""
    model = net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=shm)
    try:
        for x, y in batches(2, seed=12):
            opt.zero_grad()
            loss_of(model, x, y).backward()
            opt.step()
        plane, lane = opt._plane, opt._plane.arena.lane
        i, _, gv = plane.views["p0.0"]
        gv.fill_(0.5)
        for flag, expected in ((0, lane.REFUSED), (_UNCHANGED, lane.APPLIED)):
            gv.fill_(0.5)
            assert lane.queue(i)
            wait_checked(opt)
            gv.numpy()[0, 0] = np.nan  # behind torch's back: after the check
            opt._step_no += 1
            status = lane.step(opt._step_no, [i | flag])
            assert status == expected, (flag, status)
            if status != lane.APPLIED:
                opt._step_no -= 1
        # A check is good for one step: the same gradient unflagged is scanned again.
        opt._step_no += 1
        assert lane.step(opt._step_no, [i | _UNCHANGED]) == lane.REFUSED
        opt._step_no -= 1
        gv.zero_()
    finally:
        opt.close()


@needs_hook
def test_training_on_a_state_dir_rides_through_restarts_with_overlap(scratch):
    """A journaled session has no lane: overlap only moves gradients early.
    Killed and restarted on its --state-dir between backward and step, the
    run equals torch.optim.Adam to 1e-5 (float32 rounding over 12 steps), no
    step lost or applied twice."""
    from test_transport import start_cli, stop_proc

    sock, state = f"{scratch}/s.sock", f"{scratch}/state"
    procs = [start_cli(sock, "--state-dir", state)]
    a, b = net(5, width=16), net(5, width=16)
    opt = None
    try:
        opt = mur.RemoteOptimizer(
            a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=f"unix:{sock}", overlap=True
        )
        ref = torch.optim.Adam(b.parameters(), lr=0.01)
        assert opt.transport == "shm" and opt.overlap
        for k, (x, y) in enumerate(batches(12, seed=7)):
            for model, o in ((a, opt), (b, ref)):
                o.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
            assert opt._plane.hot._marks and not any(m.queued for m in opt._plane.hot._marks.values())
            if k in (3, 8):  # killed between the gradient and the step
                stop_proc(procs[-1])
                procs.append(start_cli(sock, "--state-dir", state))
            opt.step()
            ref.step()
        assert opt.lane_steps == 0
        assert max_diff(a, b) < 1e-5
    finally:
        if opt is not None:
            opt.close()
        for p in procs:
            stop_proc(p)


# -- speculation with a commit (issue 21; lane.cc): each update staged when its
# gradient is checked, committed at step() only where it still stands.


@needs_hook
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
@pytest.mark.parametrize(
    "opt_kw",
    [{"optimizer": "adam"}, {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05}],
    ids=["adam", "sgd-momentum"],
)
def test_speculated_steps_are_committed_with_the_bits_of_steps_computed_at_step(shm, opt_kw, rule):
    """Every gradient checked (and its update staged) before step(): the lane
    commits the staged results, and parameters and state are bit for bit
    those of overlap=False (the same kernel on the same inputs)."""
    kw = {**opt_kw, "rule": rule, **({"gamma": 0.5} if rule == "hybrid" else {})}
    on, off = run(shm, True, opt_kw=kw, settle="each"), run(shm, False, opt_kw=kw)
    assert same_bits(on[0], off[0])
    assert same_state(on[1], off[1])
    made, committed = on[4]
    assert committed == made, "nothing invalidated a speculation in a plain loop"
    assert committed % 6 == 0 and committed >= 6 * 3, (on[2], on[4])
    assert off[4] == (0, 0)


@needs_hook
@pytest.mark.parametrize(
    "name", ["sgd", "adamw", "adagrad", "rmsprop", "adamax", "nadam", "radam", "adadelta", "lion", "rprop", "asgd"]
)
def test_every_speculating_optimizer_commits_the_same_bits(shm, name):
    """The optimizers lane.cc stages (element-wise kernels: Speculates())."""
    kw = {"optimizer": name, "lr": 0.01}
    on, off = run(shm, True, opt_kw=kw, settle="each"), run(shm, False, opt_kw=kw)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[4][1] == on[4][0] >= 6 * 3, on[4]


@needs_hook
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_an_optimizer_that_does_not_speculate_is_computed_at_the_step(shm, name):
    kw = {"optimizer": name, "lr": 0.01}
    on, off = run(shm, True, opt_kw=kw, settle="each"), run(shm, False, opt_kw=kw)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[4] == (0, 0) and on[2] >= 4


@needs_hook
def test_maximize_and_grad_scaler_unscaling_are_computed_at_the_step(shm):
    """maximize negates the arena copy at the step (no _SPECULATE); an in-place
    unscale moves the version counter: the staged updates do not stand."""

    def unscale(model, _):
        for p in model.parameters():
            p.grad.mul_(1.0 / 1024)

    def scaled(model, x, y):
        return loss_of(model, x, y) * 1024

    for kw, edit, loss in (({"maximize": True}, None, loss_of), ({}, unscale, scaled)):
        on = run(shm, True, opt_kw=kw, edit=edit, loss=loss, settle="each")
        off = run(shm, False, opt_kw=kw, edit=edit, loss=loss)
        assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
        assert on[4][0] > 0 and on[4][1] == 0, (kw, on[4])


@needs_hook
def test_overlap_check_checks_while_hot_and_speculates_nothing(shm):
    on, off = run(shm, "check", settle="each"), run(shm, False)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[4] == (0, 0) and on[2] >= 4 and on[3] == [f"p0.{i}" for i in range(6)]


@needs_hook
def test_speculation_with_per_group_hyperparameters(shm):
    def two_groups(model):
        return [
            {"params": list(model[0].parameters()), "lr": 0.03, "weight_decay": 0.1},
            {"params": list(model[2].parameters()) + list(model[4].parameters())},
        ]

    kw = {"optimizer": "adamw"}
    on = run(shm, True, opt_kw=kw, groups=two_groups, settle="each")
    off = run(shm, False, opt_kw=kw, groups=two_groups)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[4][1] >= 6 * 3


def _nan_then_retry(server, overlap, where):
    """Three steps, then a step whose gradient of one tensor is NaN (every
    other tensor's update staged): refused, nothing changed; then the same
    step again with that gradient zeroed (a retry), and two more steps."""
    model = net(3, sizes=SIZES)
    opt = mur.RemoteOptimizer(
        model.parameters(), optimizer="adam", rule="additive", lr=0.01, server=server, overlap=overlap
    )
    lane = opt._plane.arena.lane
    try:
        data, spec0 = batches(6, seed=13), lane.speculations
        for k, (x, y) in enumerate(data):
            if k == 3:
                before, state = bits(model), opt.state_dict()  # before backward: an export disarms the lane
            opt.zero_grad()
            handle = None
            if k == 3 and where == "backward":  # backward makes the first layer's weight (its last gradient) NaN
                handle = model[0].weight.register_hook(lambda g: torch.full_like(g, float("nan")))
            loss_of(model, x, y).backward()
            if handle is not None:
                handle.remove()
            if overlap:
                wait_checked(opt)
            if k == 3:
                if where == "edit":
                    model[4].bias.grad[0] = float("nan")  # after its check and speculation
                _refused_step_changes_nothing(opt, model, before, state)
                for p in model.parameters():
                    p.grad.nan_to_num_(0.0)  # the retry of the same step, on finite gradients
            opt.step()
        spec = tuple(b - a for a, b in zip(spec0, lane.speculations))
        return bits(model), opt.state_dict(), spec
    finally:
        opt.close()


@needs_hook
@pytest.mark.parametrize("where", ["edit", "backward"])
def test_a_nan_after_speculation_commits_nothing_and_the_retry_matches(shm, where):
    on, off = _nan_then_retry(shm, True, where), _nan_then_retry(shm, False, where)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    made, committed = on[2]
    assert made > committed > 0, "the refused step's speculations were made and dropped, the others committed"


@needs_hook
def test_clip_grad_norm_after_the_speculation_is_computed_at_the_step(shm):
    def clip(model, _):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)

    on, off = run(shm, True, edit=clip, settle="each"), run(shm, False, edit=clip)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[4][0] > 0 and on[4][1] == 0, "every gradient was edited after its speculation"


@needs_hook
def test_a_scheduler_between_backward_and_step(shm):
    """lr changed after the speculation: the step goes by RPC with the new
    lr (the lane holds the old one), no staged result is committed."""

    def decay(_, opt):
        for g in opt.param_groups:
            g["lr"] *= 0.9

    on, off = run(shm, True, edit=decay, settle="each"), run(shm, False, edit=decay)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    assert on[4][1] == 0


@needs_hook
def test_a_torch_scheduler_before_backward_leaves_the_lane_its_hypers(shm):
    """StepLR stepped after opt.step(): between its changes the lane holds the
    step's hyperparameters and commits; every run equals overlap=False."""
    results = []
    for overlap in (True, False):
        model = net(3, sizes=SIZES)
        opt = mur.RemoteOptimizer(
            model.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=overlap
        )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        lane = opt._plane.arena.lane
        try:
            spec0 = lane.speculations
            for x, y in batches(12, seed=14):
                opt.zero_grad()
                loss_of(model, x, y).backward()
                if overlap:
                    wait_checked(opt)
                opt.step()
                sched.step()
            results.append((bits(model), opt.state_dict(), lane.speculations[1] - spec0[1]))
        finally:
            opt.close()
    assert same_bits(results[0][0], results[1][0]) and same_state(results[0][1], results[1][1])
    assert results[0][2] >= 6 * 4, results[0][2]


@needs_hook
@pytest.mark.parametrize("settle", ["first", "each"])
def test_accumulation_invalidates_the_first_micro_batch_s_speculation(shm, settle):
    """A speculation on the first micro-batch's gradient is made stale by the
    second backward (its hook queues the sum again): only the update of the
    sum is committed ("each": speculated again; "first": computed at step())."""
    on, off = run(shm, True, micro=2, settle=settle), run(shm, False, micro=2)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    made, committed = on[4]
    if settle == "each":
        assert made == 2 * committed and committed >= 6 * 3, on[4]
    else:
        assert made >= 6 * 3, on[4]


@needs_hook
def test_a_parameter_edited_after_its_speculation_is_computed_from_the_edit(shm):
    """p.data written after backward (a clamp, behind the version counter):
    the lane's digest of the parameter tells, the step starts from the edit."""

    def clamp(model, _):
        model[0].weight.data.clamp_(-0.1, 0.1)

    on, off = run(shm, True, edit=clamp, settle="each"), run(shm, False, edit=clamp)
    assert same_bits(on[0], off[0]) and same_state(on[1], off[1])
    made, committed = on[4]
    assert made > committed > 0, on[4]


@needs_hook
def test_a_checkpoint_mid_run_after_committed_steps(shm):
    """state_dict() after speculated steps (the state flipped to the lane's
    buffers and copied back at disarm) and a load into a new optimizer
    continue the same trajectory as overlap=False."""
    data = batches(8, seed=15)
    outs = []
    for overlap in (True, False):
        a = net(3, sizes=SIZES)
        opt = mur.RemoteOptimizer(
            a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=overlap
        )
        try:
            for k, (x, y) in enumerate(data):
                if k == 5:
                    ck = copy.deepcopy({"model": a.state_dict(), "opt": opt.state_dict()})
                    opt.close()
                    a = net(0, sizes=SIZES)
                    a.load_state_dict(ck["model"])
                    opt = mur.RemoteOptimizer(
                        a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=shm, overlap=overlap
                    )
                    opt.load_state_dict(ck["opt"])
                opt.zero_grad()
                loss_of(a, x, y).backward()
                if overlap:
                    wait_checked(opt)
                opt.step()
            outs.append((bits(a), opt.state_dict(), ck))
        finally:
            opt.close()
    assert same_state(outs[0][2]["opt"], outs[1][2]["opt"])
    assert same_bits(outs[0][0], outs[1][0]) and same_state(outs[0][1], outs[1][1])


@pytest.mark.skipif(HAS_HOOK, reason="checks torch < 2.1, where the hook does not exist")
def test_overlap_does_nothing_without_the_hook(server_for):
    model = net(3)
    opt = mur.RemoteOptimizer(model.parameters(), optimizer="sgd", lr=0.1, server=server_for("shm"), overlap=True)
    try:
        assert opt.transport == "shm" and not opt.overlap
    finally:
        opt.close()


def test_overlap_is_off_by_default_and_must_be_a_bool(server_for):
    opt = mur.RemoteOptimizer(net().parameters(), optimizer="sgd", lr=0.1, server=server_for("shm"))
    try:
        assert opt.transport == "shm" and not opt.overlap and opt._plane.hot is None
    finally:
        opt.close()
    with pytest.raises(ValueError, match="overlap='yes'"):
        mur.RemoteOptimizer(net().parameters(), optimizer="sgd", lr=0.1, overlap="yes")


def test_overlap_refuses_a_value_it_does_not_know():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"overlap='yes': True, 'check' or False"):
        mur.RemoteOptimizer([p], optimizer="adam", server="localhost:1", overlap="yes")
