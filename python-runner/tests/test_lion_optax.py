"""Lion against optax.lion (the reference: torch.optim has no Lion):
mur.reference in float64 against optax in float64, and the server (through
mur.optax, both engines) in float32 against optax in float32. optax adds
weight_decay * theta to the sign before scaling by -lr; mur multiplies theta
by 1 - lr * weight_decay first (the same maths, another order)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and optax)")
optax = pytest.importorskip("optax", reason="optax is not installed here (make jax builds .venv-jax)")
from optax_trajectory import assert_reference_replays, assert_within, server_and_optax  # noqa: E402
from test_trust_ratio import start  # noqa: E402

STEPS = 30
CASES = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
]
IDS = [f"lion-{i}" for i in range(len(CASES))]


def optax_of(h):
    b1, b2 = h.get("betas", (0.9, 0.99))
    return optax.lion(h["lr"], b1=b1, b2=b2, weight_decay=h.get("weight_decay", 0.0))


@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_reference_is_optax_in_float64(h):
    """Both float64: the sign is exact, the rest a few roundings a step; 1e-12 is far
    below what a wrong formula moves (a whole lr step, 1e-2)."""
    assert_reference_replays(lambda: optax_of(h), start(np.float64), "lion", h, STEPS, 1e-12)


@pytest.mark.parametrize("backend", ["native_server", "wasm_server"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_is_optax_in_float32(request, backend, h):
    """float32 both: the sign is the same while the interpolated momentum is not within
    rounding of 0 (it is not on this trajectory); the decay's other order is an ulp
    of theta a step: 30 steps within 2e-6 (1 + |theta|), the goldens' bound."""
    server = request.getfixturevalue(backend)
    assert_within(*server_and_optax(optax_of(h), "lion", server, h, start(np.float32), STEPS), 2e-6)
