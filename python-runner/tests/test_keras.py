"""mur.keras.RemoteOptimizer against a live server: model.fit on the JAX backend, schedules, config, errors."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported anywhere
pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and keras)")
keras = pytest.importorskip("keras", reason="keras is not installed here (make jax builds .venv-jax with keras)")
if keras.backend.backend() != "jax":
    pytest.skip(
        f"these tests run keras on the JAX backend (KERAS_BACKEND={os.environ['KERAS_BACKEND']!r})",
        allow_module_level=True,
    )

import mur.keras  # noqa: E402

STEPS, BATCH = 20, 16
# Relative tolerance after 20 steps against keras's own Adam (float32, same
# formula in a different order; measured 5e-7). eps is 1e-10 on both sides so
# that keras's placement of eps (before the bias correction) is negligible.
TOL = 2e-5


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 8)).astype(np.float32)
    y = (np.tanh(x[:, :4]) + 0.1 * rng.normal(size=(STEPS * BATCH, 4))).astype(np.float32)
    return x, y


def model(weights=None):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(4)])
    if weights is not None:
        m.set_weights(weights)
    return m


def fit(optimizer, weights, **compile_kw):
    m = model(weights)
    m.compile(optimizer=optimizer, loss="mse", **compile_kw)
    x, y = data()
    hist = m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return m.get_weights(), hist.history["loss"][0]


def rel(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b)) / max(float(np.abs(x).max()) for x in a)


@pytest.fixture
def remote(server_for):
    made = []

    def make(*args, transport="grpc", **kw):
        o = mur.keras.RemoteOptimizer(*args, server=server_for(transport), transport=transport, **kw)
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


@pytest.mark.parametrize(
    "mode", [dict(), dict(jit_compile=False), dict(run_eagerly=True)], ids=["jit", "no-jit", "eager"]
)
def test_fit_equals_keras_adam(remote, mode):
    w0 = model().get_weights()
    opt = remote("adam", learning_rate=1e-2, eps=1e-10)
    ours, loss = fit(opt, w0, **mode)
    theirs, their_loss = fit(keras.optimizers.Adam(1e-2, epsilon=1e-10), w0, **mode)
    assert rel(theirs, ours) <= TOL
    assert rel(w0, ours) > 1e-2  # it trained
    assert opt.remote._step_no == STEPS and int(opt.iterations) == STEPS  # one server step per batch
    assert loss == pytest.approx(their_loss, rel=1e-4)


@pytest.mark.parametrize("transport", ["shm", "grpc"])
def test_learning_rate_schedule_is_sent_with_each_step(remote, transport):
    w0 = model().get_weights()
    sched = keras.optimizers.schedules.ExponentialDecay(3e-2, decay_steps=4, decay_rate=0.5)
    ours, _ = fit(remote("adam", learning_rate=sched, eps=1e-10, transport=transport), w0)
    theirs, _ = fit(keras.optimizers.Adam(sched, epsilon=1e-10), w0)
    constant, _ = fit(keras.optimizers.Adam(3e-2, epsilon=1e-10), w0)
    assert rel(theirs, ours) <= TOL
    assert rel(constant, ours) > 10 * TOL


def test_a_wrong_formula_is_outside_the_tolerance(remote):
    """The tolerance can fail: keras's eps placement shows with a large eps."""
    w0 = model().get_weights()
    ours, _ = fit(remote("adam", learning_rate=1e-2, eps=1e-3), w0)
    theirs, _ = fit(keras.optimizers.Adam(1e-2, epsilon=1e-3), w0)
    assert rel(theirs, ours) > 10 * TOL


def test_weights_set_between_fits_are_what_the_next_step_starts_from(remote):
    w0 = model().get_weights()
    opt = remote("sgd", learning_rate=0.05, momentum=0.9)
    ref = keras.optimizers.SGD(0.05, momentum=0.9)
    m, r = model(w0), model(w0)
    m.compile(optimizer=opt, loss="mse")
    r.compile(optimizer=ref, loss="mse")
    x, y = data()
    for net in (m, r):
        net.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        w = net.get_weights()
        w[1] = np.full_like(w[1], 0.5)  # an edit between fits
        net.set_weights(w)
        net.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert rel(r.get_weights(), m.get_weights()) <= TOL
    assert opt.remote._step_no == 2 * STEPS


def test_get_config_round_trips_through_keras_serialization():
    sched = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.9)
    opt = mur.keras.RemoteOptimizer(
        "adamw", rule="hybrid", learning_rate=sched, betas=(0.8, 0.99), gamma=0.5, weight_decay=0.1, global_clipnorm=1.0
    )
    config = opt.get_config()
    assert config["optimizer"] == "adamw" and config["rule"] == "hybrid" and config["gamma"] == 0.5
    assert config["weight_decay"] == 0.1 and config["betas"] == [0.8, 0.99] and config["global_clipnorm"] == 1.0
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is mur.keras.RemoteOptimizer
    assert again.get_config() == config
    assert isinstance(again.learning_rate, keras.Variable) or again._learning_rate.get_config() == sched.get_config()


def test_unsupported_or_impossible_uses_raise_clear_errors(remote):
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        mur.keras.RemoteOptimizer("adam", gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="learning_rate="):
        mur.keras.RemoteOptimizer("adam", lr=1e-3)
    # A symbolic gradient (no value) cannot be sent: a RuntimeError, not a silent no-op.
    v = keras.Variable(np.ones(3, np.float32))
    opt = remote("adam", learning_rate=1e-2)
    opt.build([v])
    with pytest.raises(RuntimeError, match="run_eagerly=True"):
        opt.apply([keras.KerasTensor((3,))], [v])
    assert opt.remote._step_no == 0
    with pytest.raises(ValueError, match="NaN or Inf"):
        opt.apply([np.array([1.0, np.nan, 0.0], np.float32)], [v])
    assert opt.remote._step_no == 0 and np.array_equal(np.asarray(v.value), np.ones(3, np.float32))
    opt.apply([np.ones(3, np.float32)], [v])
    assert opt.remote._step_no == 1 and not np.array_equal(np.asarray(v.value), np.ones(3, np.float32))
    bad = mur.keras.RemoteOptimizer("adam", nope=1.0)
    with pytest.raises(ValueError, match="nope"):
        bad.build([keras.Variable(np.ones(3, np.float32))])


def test_state_dict_round_trip(remote):
    w0 = model().get_weights()
    x, y = data()
    opt = remote("adam", learning_rate=1e-2)
    m = model(w0)
    m.compile(optimizer=opt, loss="mse")
    m.fit(x[: BATCH * 5], y[: BATCH * 5], batch_size=BATCH, shuffle=False, verbose=0)
    sd, mid = opt.state_dict(), m.get_weights()
    m.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)

    opt2 = remote("adam", learning_rate=1e-2)
    m2 = model(mid)
    m2.compile(optimizer=opt2, loss="mse")
    opt2.build(m2.trainable_variables)
    opt2.load_state_dict(sd)
    opt2.iterations.assign(5)
    m2.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert rel(m.get_weights(), m2.get_weights()) == 0.0


def test_two_groups_in_one_session_are_two_separate_sessions(remote):
    """groups + param_labels: SGD with momentum under a schedule for the
    kernels and Adam (its own rate) for the biases in one session, against
    keras.optimizers.MultiOptimizer of two sessions, one per group: the same
    server kernels on the same variables, so the same weights bit for bit."""
    w0 = model().get_weights()
    sched = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.9)
    adam = {"optimizer": "adam", "learning_rate": 1e-2, "betas": (0.8, 0.99)}
    one = remote(
        "sgd",
        learning_rate=sched,
        momentum=0.9,
        groups={"kernels": {}, "biases": adam},
        param_labels={".*/kernel": "kernels", ".*/bias": "biases"},
    )
    ours, _ = fit(one, w0)
    sgd = remote("sgd", learning_rate=sched, momentum=0.9)
    adam_alone = remote("adam", learning_rate=1e-2, betas=(0.8, 0.99))
    theirs, _ = fit(keras.optimizers.MultiOptimizer(lambda v: sgd if v.path.endswith("kernel") else adam_alone), w0)
    groups = one.remote.param_groups
    assert [g.get("optimizer", "sgd") for g in groups] == ["sgd", "adam"] and [len(g["params"]) for g in groups] == [
        2,
        2,
    ]
    assert groups[0]["lr"] == pytest.approx(0.05 * 0.9 ** (STEPS - 1)) and groups[1]["lr"] == float(np.float32(1e-2))
    assert rel(w0, ours) > 1e-2  # it trained
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    config = one.get_config()
    assert config["param_labels"] == {".*/kernel": "kernels", ".*/bias": "biases"}
    again = keras.optimizers.deserialize(keras.optimizers.serialize(one))
    assert again.get_config() == config and again.mur_groups["biases"]["optimizer"] == "adam"


def test_bad_labels_and_groups_are_refused_naming_the_variable(remote):
    m = model()
    groups = {"kernels": {}, "biases": {"optimizer": "adam"}}
    opt = remote("sgd", learning_rate=0.1, groups=groups, param_labels={".*/kernel": "kernels"})
    with pytest.raises(
        ValueError, match=r"variable sequential\w*/dense\w*/bias the label None, which is not a key of groups"
    ):
        opt.build(m.trainable_variables)
    with pytest.raises(ValueError, match=r"variable sequential\w*/dense\w*/kernel the label 'kernel'"):
        remote("sgd", learning_rate=0.1, groups=groups, param_labels=lambda v: v.path.split("/")[-1]).build(
            m.trainable_variables
        )
    with pytest.raises(ValueError, match=r"param_groups\[1\]: nesterov=True: not a hyperparameter of adam"):
        remote(
            "sgd",
            learning_rate=0.1,
            groups={"kernels": {}, "biases": {"optimizer": "adam", "nesterov": True}},
            param_labels={".*/kernel": "kernels", ".*/bias": "biases"},
        ).build(m.trainable_variables)
    with pytest.raises(ValueError, match="go together"):
        mur.keras.RemoteOptimizer("sgd", groups=groups)
    with pytest.raises(ValueError, match=r"groups\['biases'\] has 'lr'"):
        mur.keras.RemoteOptimizer("sgd", groups={"biases": {"lr": 1.0}}, param_labels={".*": "biases"})
    with pytest.raises(ValueError, match="cannot serialize"):
        mur.keras.RemoteOptimizer("sgd", groups=groups, param_labels=lambda v: "kernels").get_config()
    assert opt.remote is None  # nothing was created
