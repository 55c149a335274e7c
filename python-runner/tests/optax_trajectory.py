"""The trajectory the optax parity tests (test_trust_ratio, test_adafactor_optax,
test_muon_optax) hold mur to: a gradient that depends on theta, and an optax
transformation run over it. Imported after the test has importorskip'ped optax."""

import numpy as np
import optax


def gradient(p, t):
    """g = 0.6 cos(0.7 i + 0.3 t) + 0.4 theta per leaf (depends on theta, so trajectories are not trivial)."""
    return {
        k: (0.6 * np.cos(0.7 * np.arange(v.size) + 0.3 * t).reshape(v.shape) + 0.4 * np.asarray(v)).astype(v.dtype)
        for k, v in p.items()
    }


def run_optax(tx, params, steps):
    """``steps`` steps of ``tx`` from ``params``: the parameters after each step, and each step's gradients."""
    state, out, grads = tx.init(params), [], []
    for t in range(1, steps + 1):
        g = gradient(params, t)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        grads.append(g)
        out.append({k: np.asarray(v) for k, v in params.items()})
    return out, grads
