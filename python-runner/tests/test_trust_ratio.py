"""LAMB and LARS against optax (the reference: torch.optim has neither):
mur.reference in float64 against optax in float64, and the server (through
mur.optax, both engines) in float32 against optax in float32, on a pytree of
a matrix and a vector (each with its own trust ratio)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and optax)")
optax = pytest.importorskip("optax", reason="optax is not installed here (make jax builds .venv-jax)")
from optax_trajectory import assert_reference_replays, assert_within, server_and_optax  # noqa: E402

STEPS = 30
CASES = [
    ("lamb", dict(lr=0.01)),
    ("lamb", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-4)),
    ("lars", dict(lr=0.5, trust_coefficient=0.05)),
    ("lars", dict(lr=0.5, trust_coefficient=0.05, weight_decay=0.01, eps=0.1, nesterov=True)),
    ("lars", dict(lr=0.5, trust_coefficient=0.05, momentum=0.0)),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def optax_of(name, h):
    if name == "lamb":
        b1, b2 = h.get("betas", (0.9, 0.999))
        return optax.lamb(h["lr"], b1=b1, b2=b2, eps=h.get("eps", 1e-6), weight_decay=h.get("weight_decay", 0.0))
    return optax.lars(
        h["lr"],
        weight_decay=h.get("weight_decay", 0.0),
        trust_coefficient=h["trust_coefficient"],
        eps=h.get("eps", 0.0),
        momentum=h.get("momentum", 0.9),
        nesterov=h.get("nesterov", False),
    )


def start(dtype):
    i = np.arange(12, dtype=np.float64)
    return {
        "w": (np.sin(1.3 * i + 0.4) * 0.8).reshape(3, 4).astype(dtype),
        "b": np.linspace(-0.3, 0.5, 5).astype(dtype),
    }


@pytest.mark.parametrize("name,h", CASES, ids=IDS)
def test_reference_is_optax_in_float64(name, h):
    """Both float64, the same maths in another order: ~1e-15 after 30 steps; 1e-12
    is far below what a wrong formula moves (>= 1e-5 after one step)."""
    assert_reference_replays(lambda: optax_of(name, h), start(np.float64), name, h, STEPS, 1e-12)


@pytest.mark.parametrize("backend", ["native_server", "wasm_server"])
@pytest.mark.parametrize("name,h", CASES, ids=IDS)
def test_server_is_optax_in_float32(request, backend, name, h):
    """float32 both: rounding of ~10 ops a step plus the two norms, 30 steps;
    2e-6 (1 + |theta|), the goldens' bound against torch, holds with room."""
    server = request.getfixturevalue(backend)
    assert_within(*server_and_optax(optax_of(name, h), name, server, h, start(np.float32), STEPS), 2e-6)
