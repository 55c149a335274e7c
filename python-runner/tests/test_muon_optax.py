"""Muon against optax.contrib.muon, configured to torch.optim.Muon's maths
(what mur implements): mur.reference in float64 against optax in float64,
and the server (through mur.optax, both engines) in float32 against optax in
float32, on a pytree of a tall and a wide matrix.

optax's muon is torch's maths only with
  - nesterov=False: optax's Nesterov blends the bias-corrected momentum and
    gradient, beta mu / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t), where
    torch blends beta buf + (1 - beta) g; the two weightings differ, not by a
    factor that the normalisation removes. Without Nesterov optax's bias
    correction is one factor on the whole matrix, which X / ||X|| removes;
  - eps=0: optax divides by ||X|| + eps, torch by max(||X||, eps);
  - weight dimension numbers (reduction_axis=1, output_axis=0): optax's
    default reads a matrix as (fan_in, fan_out) = (rows, cols), torch as
    (out, in); with the axes swapped optax's width scaling
    sqrt(max(1, fan_out / fan_in)) is torch's "original" adjustment and
    consistent_rms=0.2 its "match_rms_adamw". torch's "spectral_unclamped"
    has no optax counterpart.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed here (make jax builds .venv-jax with jax and optax)")
optax = pytest.importorskip("optax", reason="optax is not installed here (make jax builds .venv-jax)")
from optax.contrib import MuonDimensionNumbers  # noqa: E402
from optax_trajectory import assert_reference_replays, server_and_optax  # noqa: E402

STEPS = 20
CASES = [
    dict(lr=0.02, nesterov=False, eps=0.0),
    dict(lr=0.02, nesterov=False, eps=0.0, momentum=0.8, weight_decay=0.05, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.02, nesterov=False, eps=0.0, ns_steps=3, ns_coefficients=(2.0, -1.5, 0.5)),
]
IDS = [f"muon-{i}" for i in range(len(CASES))]


def optax_of(h):
    dims = MuonDimensionNumbers(reduction_axis=1, output_axis=0)  # torch's (out, in) reading of a matrix
    return optax.contrib.muon(
        h["lr"],
        ns_coeffs=h.get("ns_coefficients", (3.4445, -4.775, 2.0315)),
        ns_steps=h.get("ns_steps", 5),
        beta=h.get("momentum", 0.95),
        eps=h["eps"],
        weight_decay=h.get("weight_decay", 0.1),
        nesterov=h["nesterov"],
        muon_weight_dimension_numbers={"tall": dims, "wide": dims},
        consistent_rms=0.2 if h.get("adjust_lr_fn") == "match_rms_adamw" else None,
    )


def start(dtype):
    return {
        "tall": (np.sin(1.3 * np.arange(15) + 0.4) * 0.8).reshape(5, 3).astype(dtype),
        "wide": (np.cos(0.9 * np.arange(8) - 0.2) * 0.5).reshape(2, 4).astype(dtype),
    }


@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_reference_is_optax_in_float64(h):
    """Both float64, the same maths in another order (and optax's bias
    correction, removed by the normalisation up to rounding): ~1e-14 after 20
    steps; 1e-11 is far below what a wrong formula moves (>= 1e-4 a step)."""
    assert_reference_replays(lambda: optax_of(h), start(np.float64), "muon", h, STEPS, 1e-11)


@pytest.mark.parametrize("backend", ["native_server", "wasm_server"])
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_server_is_optax_in_float32(request, backend, h):
    """float32 both: Newton-Schulz amplifies float32 rounding by up to
    a^ns_steps ~ 500 (u = 6e-8: 3e-5 relative in NS(u), entries below 1), and
    each step moves theta by lr * adjust (<= 0.02 * 1.3) times NS(u): 20 steps,
    2e-5 at most."""
    got, want = server_and_optax(optax_of(h), "muon", request.getfixturevalue(backend), h, start(np.float32), STEPS)
    worst = max(float(np.max(np.abs(g[k] - w[k]))) for g, w in zip(got, want) for k in w)
    print(f"muon {h} on {backend}: worst difference from optax {worst:.2e}")
    assert worst < 2e-5
