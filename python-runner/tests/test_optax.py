"""mur.optax against a live server: the optax contract, optax.adam, chains, checkpoints, bad input."""

import pickle

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and optax)")
optax = pytest.importorskip("optax", reason="optax is not installed here (make jax builds .venv-jax)")
import jax.numpy as jnp  # noqa: E402

import mur.optax  # noqa: E402
from mur.optax import _updates  # noqa: E402

STEPS = 20
# Relative tolerance (max|a-b| / max|a|) between mur and optax's own Adam
# after 20 steps: both are float32 and compute the same formula in different
# orders (optax divides by the bias corrections before the sqrt); measured
# 1e-6 on this problem; a wrong formula (eps placement, bias correction)
# differs by 1e-3 or more.
TOL = 2e-5


def problem(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = {
        "w1": jax.random.normal(k[0], (8, 16)) * 0.3,
        "b1": jnp.zeros(16),
        "out": [jax.random.normal(k[1], (16, 4)) * 0.3, jnp.full((4,), 0.1)],
    }
    xs = jax.random.normal(k[2], (STEPS, 16, 8))
    ys = jnp.tanh(xs[..., :4]) + 0.1 * jax.random.normal(k[3], (STEPS, 16, 4))
    return params, xs, ys


@jax.jit
def grad(p, x, y):
    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        return jnp.mean((h @ p["out"][0] + p["out"][1] - y) ** 2)

    return jax.grad(loss)(p)


def train(tx, params, xs, ys, state=None, start=0, steps=STEPS, edit=None):
    state = tx.init(params) if state is None else state
    for k in range(start, start + steps):
        if edit is not None and k == edit[0]:
            params = edit[1](params)
        updates, state = tx.update(grad(params, xs[k], ys[k]), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def rel(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb)) / max(float(jnp.max(jnp.abs(x))) for x in la)


def bits_equal(a, b):
    return all(
        np.array_equal(np.asarray(x).view(np.int32), np.asarray(y).view(np.int32))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


@pytest.fixture
def remote(server_for):
    made = []

    def make(*args, transport="grpc", **kw):
        tx = mur.optax.remote(*args, server=server_for(transport), transport=transport, **kw)
        made.append(tx)
        return tx

    yield make
    for tx in made:
        tx.close()


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_adam_equals_optax_adam_and_apply_updates_gives_the_servers_values(remote, transport):
    params, xs, ys = problem()
    tx = remote("adam", lr=1e-2, transport=transport)
    assert isinstance(tx, optax.GradientTransformation)
    ours, state = train(tx, params, xs, ys)
    theirs, _ = train(optax.adam(1e-2), params, xs, ys)
    assert tx.optimizer.transport == transport
    assert int(state.count) == STEPS
    assert rel(theirs, ours) <= TOL
    assert rel(params, ours) > 1e-2  # it trained
    # optax.apply_updates(params, updates) is the server's copy, bit for bit.
    assert bits_equal(ours, tx.adapter.params())
    # The state is a pytree of int32 arrays (jax.tree maps over it).
    assert [int(x) for x in jax.tree_util.tree_leaves(state)] == [STEPS, int(state.handle)]


def test_a_wrong_formula_is_outside_the_tolerance(remote):
    """The tolerance can fail: optax's Adam with eps inside the sqrt (eps_root) differs."""
    params, xs, ys = problem()
    ours, _ = train(remote("adam", lr=1e-2, eps=1e-3), params, xs, ys)
    theirs, _ = train(optax.adam(1e-2, eps=0.0, eps_root=1e-3), params, xs, ys)
    assert rel(theirs, ours) > 10 * TOL


def test_chain_with_global_norm_clipping(remote):
    params, xs, ys = problem()
    norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grad(params, xs[0], ys[0])))))
    assert norm > 0.05  # the clip is active
    ours, state = train(optax.chain(optax.clip_by_global_norm(0.05), remote("adam", lr=1e-2)), params, xs, ys)
    theirs, _ = train(optax.chain(optax.clip_by_global_norm(0.05), optax.adam(1e-2)), params, xs, ys)
    unclipped, _ = train(remote("adam", lr=1e-2), params, xs, ys)
    assert rel(theirs, ours) <= TOL
    assert rel(unclipped, ours) > 10 * TOL  # clipping changed the trajectory
    assert int(state[1].count) == STEPS


def test_learning_rate_schedule_is_sent_with_each_step(remote):
    params, xs, ys = problem()
    sched = optax.exponential_decay(3e-2, transition_steps=4, decay_rate=0.5)
    ours, _ = train(remote("adam", learning_rate=sched), params, xs, ys)
    theirs, _ = train(optax.adam(sched), params, xs, ys)
    constant, _ = train(optax.adam(3e-2), params, xs, ys)
    assert rel(theirs, ours) <= TOL
    assert rel(constant, ours) > 10 * TOL


def test_sgd_momentum_and_edits_between_steps_are_kept(remote):
    params, xs, ys = problem()
    zero_bias = (5, lambda p: {**p, "b1": jnp.full(16, 0.5)})
    ours, _ = train(remote("sgd", lr=0.05, momentum=0.9), params, xs, ys, edit=zero_bias)
    theirs, _ = train(optax.sgd(0.05, momentum=0.9), params, xs, ys, edit=zero_bias)
    unedited, _ = train(optax.sgd(0.05, momentum=0.9), params, xs, ys)
    assert rel(theirs, ours) <= TOL
    assert rel(unedited, ours) > 10 * TOL


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_checkpoint_round_trip_continues_identically(remote, transport):
    params, xs, ys = problem()
    tx = remote("adam", lr=1e-2, transport=transport)
    mid, state = train(tx, params, xs, ys, steps=8)
    ckpt = pickle.loads(pickle.dumps(tx.state_dict(state)))  # plain Python: picklable
    assert ckpt["count"] == 8
    end, _ = train(tx, mid, xs, ys, state=state, start=8, steps=8)

    tx2 = remote("adam", lr=1e-2, transport=transport)  # a new session (as after a restart)
    state2 = tx2.init(params)  # from the *initial* params: the checkpoint brings the rest
    state2 = tx2.load_state_dict(state2, ckpt)
    assert int(state2.count) == 8
    assert bits_equal(tx2.adapter.params(), mid)
    end2, state2 = train(tx2, mid, xs, ys, state=state2, start=8, steps=8)
    assert bits_equal(end, end2)
    assert int(state2.count) == 16
    # Without the checkpoint the continuation differs (the moments matter).
    fresh = remote("adam", lr=1e-2, transport=transport)
    end3, _ = train(fresh, mid, xs, ys, start=8, steps=8)
    assert rel(end, end3) > 10 * TOL


def test_update_inside_jit_is_refused_and_changes_nothing(remote):
    params, xs, ys = problem()
    tx = remote("adam", lr=1e-2)
    state = tx.init(params)
    g = grad(params, xs[0], ys[0])
    with pytest.raises(TypeError, match=r"jax.jit"):
        jax.jit(lambda g, s, p: tx.update(g, s, p))(g, state, params)
    assert tx.optimizer._step_no == 0 and bits_equal(tx.adapter.params(), params)
    tx.update(g, state, params)  # outside jit it steps
    assert tx.optimizer._step_no == 1


def test_bad_input_names_the_value_and_leaves_the_session_unchanged(remote):
    params, xs, ys = problem()
    tx = remote("adam", lr=1e-2)
    state = tx.init(params)
    g = grad(params, xs[0], ys[0])
    before = tx.adapter.params()
    bad_nan = {**g, "b1": g["b1"].at[3].set(jnp.nan)}
    with pytest.raises(ValueError, match="NaN or Inf"):
        tx.update(bad_nan, state, params)
    with pytest.raises(ValueError, match="structure"):
        tx.update({"w1": g["w1"]}, state, params)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        tx.update({**g, "b1": jnp.zeros(3)}, state, params)
    with pytest.raises(TypeError, match="RemoteState"):
        tx.update(g, optax.EmptyState(), params)
    assert tx.optimizer._step_no == 0 and bits_equal(tx.adapter.params(), before)
    _, state1 = tx.update(g, state, params)
    with pytest.raises(ValueError, match=r"state.count=0"):  # a step from an old state
        tx.update(g, state, params)
    other = remote("adam", lr=1e-2)
    other_state = other.init(params)
    with pytest.raises(ValueError, match="handle"):
        tx.update(g, other_state, params)
    assert tx.optimizer._step_no == 1 and int(state1.count) == 1
    with pytest.raises(TypeError, match="int32"):
        remote("adam", lr=1e-2).init({"w": jnp.zeros(3, jnp.int32)})
    with pytest.raises(ValueError, match="nope"):
        remote("adam", nope=1.0).init(params)
    with pytest.raises(ValueError, match="format"):
        tx.load_state_dict(state1, {"format": "something else"})


def test_closed_transformation_refuses_to_step(remote):
    params, xs, ys = problem()
    tx = remote("adam", lr=1e-2)
    state = tx.init(params)
    tx.close()
    with pytest.raises(ValueError, match="after close"):
        tx.update(grad(params, xs[0], ys[0]), state, params)


def test_updates_round_trip_through_apply_updates():
    rng = np.random.default_rng(0)
    old = rng.normal(size=100_000).astype(np.float32)
    # Ordinary steps (relative 1e-3), steps across zero, and 1e7-fold shrinking.
    new = np.concatenate(
        [
            old[:60_000] * (1 + 1e-3 * rng.normal(size=60_000)).astype(np.float32),
            -old[60_000:80_000] * 0.5,
            old[80_000:] * np.float32(1e-7),
        ]
    ).astype(np.float32)
    u, got = _updates(old, new)
    assert u.dtype == np.float32
    applied = optax.apply_updates(jnp.asarray(old), jnp.asarray(u))
    np.testing.assert_array_equal(np.asarray(applied), got)  # what optax computes
    assert (got[:60_000] == new[:60_000]).all()  # every ordinary step is exact
    assert not (got[80_000:] == new[80_000:]).all()  # the hard cases are hard
    # Everywhere: within one ulp of the step itself.
    assert (np.abs(got.astype(np.float64) - new) <= np.spacing(np.abs(new - old))).all()


def _labels(p):
    """optax.multi_transform's param_labels: the matrices "mats", the vectors "vecs"."""
    return jax.tree_util.tree_map(lambda x: "mats" if x.ndim == 2 else "vecs", p)


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_two_groups_in_one_session_are_two_separate_sessions(remote, transport):
    """groups + param_labels: SGD with momentum (under a schedule) for the
    matrices and Adam for the vectors in one session, against
    optax.multi_transform of two sessions, one per group: the same server
    kernels on the same leaves, so bit for bit the same parameters."""
    params, xs, ys = problem()
    schedule = lambda count: 0.05 * 0.9**count  # noqa: E731
    one = remote(
        "sgd",
        lr=schedule,
        momentum=0.9,
        groups={"mats": {}, "vecs": {"optimizer": "adam", "lr": 1e-2, "betas": (0.8, 0.99)}},
        param_labels=_labels,
        transport=transport,
    )
    two = optax.multi_transform(
        {
            "mats": remote("sgd", lr=schedule, momentum=0.9, transport=transport),
            "vecs": remote("adam", lr=1e-2, betas=(0.8, 0.99), transport=transport),
        },
        _labels,
    )
    ours, state = train(one, params, xs, ys)
    theirs, _ = train(two, params, xs, ys)
    groups = one.optimizer.param_groups
    assert [g.get("optimizer", "sgd") for g in groups] == ["adam", "sgd"]  # leaf order: b1, out, w1
    assert [len(g["params"]) for g in groups] == [2, 2] and groups[1]["lr"] == pytest.approx(schedule(STEPS - 1))
    assert rel(params, ours) > 1e-2  # it trained
    assert bits_equal(ours, theirs)
    # A pytree prefix labels whole subtrees; the checkpoint carries each group's optimizer.
    prefix = remote(
        "sgd", lr=0.05, groups={"a": {}, "b": {"optimizer": "adam"}}, param_labels={"w1": "a", "b1": "b", "out": "a"}
    )
    prefix.init(params)
    assert [len(g["params"]) for g in prefix.optimizer.param_groups] == [1, 3]  # b1; out (2 leaves), w1
    assert [g.get("optimizer") for g in one.state_dict(state)["param_groups"]] == ["adam", None]


def test_bad_labels_and_groups_are_refused_naming_the_leaf(remote):
    params, xs, ys = problem()
    groups = {"mats": {}, "vecs": {"optimizer": "adam"}}
    with pytest.raises(ValueError, match=r"params leaf \['out'\]\[1\] the label 'vec', which is not a key of groups"):
        remote("sgd", lr=0.1, groups=groups, param_labels=lambda p: {**_labels(p), "out": ["mats", "vec"]}).init(params)
    with pytest.raises(ValueError, match=r"label 3"):
        remote("sgd", lr=0.1, groups=groups, param_labels={"w1": "mats", "b1": 3, "out": "mats"}).init(params)
    with pytest.raises(ValueError, match="not a pytree prefix of params"):
        remote("sgd", lr=0.1, groups=groups, param_labels={"w1": "mats"}).init(params)
    with pytest.raises(ValueError, match=r"groups\['vecs'\]: nesterov=True: not a hyperparameter of adam"):
        remote(
            "sgd", lr=0.1, groups={"mats": {}, "vecs": {"optimizer": "adam", "nesterov": True}}, param_labels=_labels
        ).init(params)
    with pytest.raises(ValueError, match=r"groups\['vecs'\]: optimizer='adamm': unknown"):
        remote("sgd", lr=0.1, groups={"mats": {}, "vecs": {"optimizer": "adamm"}}, param_labels=_labels).init(params)
    with pytest.raises(ValueError, match="go together"):
        remote("sgd", lr=0.1, groups=groups)
    with pytest.raises(ValueError, match=r"groups\['vecs'\]: eps=nan"):
        remote("sgd", lr=0.1, groups={"mats": {}, "vecs": {"eps": float("nan")}}, param_labels=_labels)
    # Refused at init: no session was made, so an update says so and nothing was stepped.
    tx = remote("sgd", lr=0.1, groups=groups, param_labels=lambda p: jax.tree_util.tree_map(lambda x: "x", p))
    with pytest.raises(ValueError, match=r"params leaf \['b1'\] the label 'x'"):
        tx.init(params)
    with pytest.raises(ValueError, match="before init"):
        tx.update(grad(params, xs[0], ys[0]), mur.optax.RemoteState(np.int32(0), np.int32(0)), params)
