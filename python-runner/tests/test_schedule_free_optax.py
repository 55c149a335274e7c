"""Schedule-Free AdamW against optax.contrib.schedule_free_adamw (the reference:
torch.optim has none): mur.reference in float64 against optax in float64, the
server (through mur.optax, both engines) in float32 against optax in float32,
and mur.optax.schedule_free_eval_params against optax's, on a pytree of a
matrix and a vector.

The cases cover optax's two schedule counts: with warmup_steps the base step
takes the warmup at count t-1 (0 at the first step: z stays) and the averaging
weight at t; a reference that used one count for both is off by >= 1e-3 within
the 10 warmup steps."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and optax)")
optax = pytest.importorskip("optax", reason="optax is not installed here (make jax builds .venv-jax)")
import jax.numpy as jnp  # noqa: E402
from optax_trajectory import assert_reference_replays, gradient, run_optax  # noqa: E402

import mur  # noqa: E402
import mur.optax  # noqa: E402

STEPS = 30
CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-4),
    dict(lr=0.02, warmup_steps=10, weight_lr_power=1.0),
]
IDS = [f"case{i}" for i in range(len(CASES))]


def optax_of(h):
    b1, b2 = h.get("betas", (0.9, 0.999))
    return optax.contrib.schedule_free_adamw(
        learning_rate=h["lr"],
        warmup_steps=h.get("warmup_steps") or None,
        b1=b1,
        b2=b2,
        eps=h.get("eps", 1e-8),
        weight_decay=h.get("weight_decay", 0.0),
        weight_lr_power=h.get("weight_lr_power", 2.0),
    )


def optax64_of(h):
    """optax.contrib.schedule_free_adamw's own chain (optax/contrib/_schedule_free.py)
    with one change under warmup: the warmup schedule in float64 (optax's
    warmup_constant_schedule is float32 even under x64, ~5e-10 off, which alone
    moves a float64 trajectory by ~6e-11)."""
    if not h.get("warmup_steps"):
        return optax_of(h)
    b1, b2 = h.get("betas", (0.9, 0.999))
    lr, w = h["lr"], h["warmup_steps"]

    def schedule(count):
        return lr * jnp.minimum(jnp.asarray(count, jnp.float64), w) / w

    base = optax.chain(
        optax.scale_by_rms(decay=b2, eps=h.get("eps", 1e-8), eps_in_sqrt=False, bias_correction=True),
        optax.add_decayed_weights(h.get("weight_decay", 0.0)),
        optax.scale_by_learning_rate(schedule),
    )
    return optax.contrib.schedule_free(base, schedule, b1=b1, weight_lr_power=h.get("weight_lr_power", 2.0))


def start(dtype):
    i = np.arange(12, dtype=np.float64)
    return {
        "w": (np.sin(1.3 * i + 0.4) * 0.8).reshape(3, 4).astype(dtype),
        "b": np.linspace(-0.3, 0.5, 5).astype(dtype),
    }


@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_reference_is_optax_in_float64(h):
    """Both float64, the same maths in another order: ~1e-16 after 30 steps
    (measured: 4.4e-16); 1e-12 is far below what a wrong formula moves (the
    base step's warmup taken at t instead of t-1: 2.4e-2)."""
    assert_reference_replays(lambda: optax64_of(h), start(np.float64), "schedule_free_adamw", h, STEPS, 1e-12)


@pytest.mark.parametrize("backend", ["native_server", "wasm_server"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_is_optax_in_float32(request, backend, h):
    """float32 both: rounding of ~12 ops a step (x is derived from y and z each
    step, as optax does), 30 steps of ~lr; 2e-6 (1 + |theta|), the goldens'
    bound against torch, holds with room. The evaluation point x too."""
    params = {k: jnp.asarray(v) for k, v in start(np.float32).items()}
    want, _ = run_optax(optax_of(h), params, STEPS)
    tx = mur.optax.remote("schedule_free_adamw", "additive", server=request.getfixturevalue(backend), **h)
    ref = optax_of(h)
    try:
        state, rstate, p, rp = tx.init(params), ref.init(params), params, params
        for t in range(1, STEPS + 1):
            updates, state = tx.update(gradient(p, t), state, p)
            p = optax.apply_updates(p, updates)
            rupdates, rstate = ref.update(gradient(rp, t), rstate, rp)
            rp = optax.apply_updates(rp, rupdates)
            for k in params:
                err = np.abs(np.asarray(p[k]) - want[t - 1][k])
                assert np.all(err <= 2e-6 * (1 + np.abs(want[t - 1][k]))), (t, k, float(err.max()))
        got_x = mur.optax.schedule_free_eval_params(state, p)
        want_x = optax.contrib.schedule_free_eval_params(rstate, rp)
        for k in params:
            err = np.abs(np.asarray(got_x[k]) - np.asarray(want_x[k]))
            assert np.all(err <= 2e-5 * (1 + np.abs(np.asarray(want_x[k])))), (k, float(err.max()))
            # x is not y: the test tells the evaluation point from the parameters.
            assert np.max(np.abs(np.asarray(want_x[k]) - np.asarray(rp[k]))) > 1e-4
    finally:
        tx.close()


def test_defaults_are_optaxs_on_the_server_and_in_the_reference(server):
    """One set of defaults: optax.contrib.schedule_free_adamw's signature (in torch's
    spelling: lr, betas), the server's table (RemoteOptimizer's param_groups) and
    mur.reference.DEFAULTS."""
    import inspect

    import torch

    from mur import reference

    sig = {k: p.default for k, p in inspect.signature(optax.contrib.schedule_free_adamw).parameters.items()}
    want = dict(
        lr=sig["learning_rate"],
        betas=(sig["b1"], sig["b2"]),
        eps=sig["eps"],
        weight_decay=sig["weight_decay"],
        warmup_steps=0,  # optax's None: no warmup
        weight_lr_power=sig["weight_lr_power"],
    )
    assert sig["warmup_steps"] is None
    assert reference.DEFAULTS["schedule_free_adamw"] == want
    opt = mur.RemoteOptimizer([torch.nn.Parameter(torch.zeros(3))], optimizer="schedule_free_adamw", server=server)
    try:
        group = opt.param_groups[0]
        for k, v in want.items():
            assert tuple(group[k]) == pytest.approx(v) if k == "betas" else group[k] == pytest.approx(v), k
    finally:
        opt.close()
