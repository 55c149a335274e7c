"""Adafactor against optax.adafactor, configured to torch.optim.Adafactor's
maths (the one mur implements): mur.reference in float64 against optax in
float64, and the server (through mur.optax, both engines) in float32 against
optax in float32, on a pytree of a matrix, a vector and a stack of matrices.

optax.adafactor is torch's algorithm when
  - min_dim_size_to_factor=1: optax factors only dims >= 128 by default;
  - the shapes' two largest dims are their last two: optax factors the two
    largest dims, torch the last two (a [4, 3, 2] tensor differs);
  - learning_rate is the schedule count -> min(lr, 1/sqrt(count + 1)): torch's
    relative step rho_t (optax takes the rate as given);
  - weight_decay_rate = lr * weight_decay (a constant lr): optax adds
    rate * theta after the parameter scale, torch multiplies theta by 1 - lr wd;
  - epsilon=1e-30 with eps=(1e-30, 1e-3) here: optax adds epsilon to g^2 and
    torch clamps v and the row mean by eps1; with gradients far from 0 both
    are no-ops. eps2 is optax's fixed min_scale 1e-3.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and optax)")
optax = pytest.importorskip("optax", reason="optax is not installed here (make jax builds .venv-jax)")
import jax.numpy as jnp  # noqa: E402
from optax_trajectory import assert_reference_replays, assert_within, server_and_optax  # noqa: E402

STEPS = 30
CASES = [dict(lr=0.01), dict(lr=0.05, d=1.5), dict(lr=0.02, beta2_decay=-0.5, weight_decay=0.1)]
IDS = [f"case{i}" for i in range(len(CASES))]


def optax_of(h):
    lr = h["lr"]
    return optax.adafactor(
        learning_rate=lambda count: jnp.minimum(lr, 1 / jnp.sqrt(count + 1.0)),
        min_dim_size_to_factor=1,
        decay_rate=-h.get("beta2_decay", -0.8),
        clipping_threshold=h.get("d", 1.0),
        multiply_by_parameter_scale=True,
        weight_decay_rate=lr * h["weight_decay"] if h.get("weight_decay") else None,
        eps=1e-30,
    )


def optax64_of(h):
    """optax.adafactor's own chain (optax/_src/alias.py) with one change: the
    second-moment weight 1 - t^-0.8 and the schedule in float64 (optax makes the
    step count float32 in both, even under x64: factorized._decay_rate_pow; the
    schedule from its int32 count), ~1e-7 off, which alone moves a float64
    trajectory by ~1e-8."""
    lr = h["lr"]
    wd = h.get("weight_decay")
    return optax.chain(
        optax.scale_by_factored_rms(
            decay_rate=-h.get("beta2_decay", -0.8),
            min_dim_size_to_factor=1,
            epsilon=1e-30,
            decay_rate_fn=lambda step, rate: (
                1.0 - (jnp.asarray(step, jnp.float64) + 1.0) ** (-jnp.asarray(rate, jnp.float64))
            ),
        ),
        optax.clip_by_block_rms(h.get("d", 1.0)),
        optax.scale_by_learning_rate(
            lambda count: jnp.minimum(lr, 1 / jnp.sqrt(count + jnp.float64(1))), flip_sign=False
        ),
        optax.scale_by_param_block_rms(),
        *([optax.add_decayed_weights(lr * wd)] if wd else []),
        optax.scale(-1),
    )


def mur_hypers(h):
    return dict(h, eps=(1e-30, 1e-3))


def start(dtype):
    i = np.arange(24, dtype=np.float64)
    return {
        "w": (np.sin(1.3 * i[:12] + 0.4) * 0.8).reshape(3, 4).astype(dtype),
        "b": np.linspace(-0.3, 0.5, 5).astype(dtype),
        "s": (np.cos(0.9 * i + 0.2) * 0.6).reshape(2, 3, 4).astype(dtype),
    }


@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_reference_is_optax_in_float64(h):
    """Both float64 (optax64_of), the same maths in another order: ~1e-16 after 30
    steps; 1e-12 is far below what a wrong formula moves (>= 1e-5 after one step)."""
    assert_reference_replays(lambda: optax64_of(h), start(np.float64), "adafactor", mur_hypers(h), STEPS, 1e-12)


@pytest.mark.parametrize("backend", ["native_server", "wasm_server"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_is_optax_in_float32(request, backend, h):
    """float32 both: rounding of ~10 ops a step plus the row, column and RMS
    reductions, 30 steps of at most rho rms(theta) d ~ 1e-2; 2e-6 (1 + |theta|),
    the goldens' bound against torch, holds with room."""
    server = request.getfixturevalue(backend)
    assert_within(*server_and_optax(optax_of(h), "adafactor", server, mur_hypers(h), start(np.float32), STEPS), 2e-6)
