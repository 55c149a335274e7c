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


def assert_reference_replays(make_tx, start, optimizer, hypers, steps, tol):
    """mur.reference in float64 replays optax's float64 trajectory: ``make_tx()``
    (built under jax's x64 mode) run for ``steps`` steps from ``start`` (float64
    numpy leaves), the reference fed the same gradients, within ``tol`` after
    every step; and the trajectory moved (> 1e-2), so that agreeing says something."""
    import jax.numpy as jnp
    import torch
    from jax.experimental import enable_x64

    from mur import reference

    with enable_x64():
        want, grads = run_optax(make_tx(), {k: jnp.asarray(v) for k, v in start.items()}, steps)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in start.items()}
    opt = reference.Optimizer(params.values(), optimizer=optimizer, rule="additive", **hypers)
    for t, g in enumerate(grads):
        for k, p in params.items():
            p.grad = torch.from_numpy(np.asarray(g[k]))
        opt.step()
        for k, p in params.items():
            assert np.max(np.abs(p.detach().numpy() - want[t][k])) < tol, (t + 1, k)
    moved = max(np.max(np.abs(want[-1][k] - v)) for k, v in start.items())
    assert moved > 1e-2, f"the trajectory barely moved ({moved})"


def server_and_optax(tx_ref, name, server, hypers, start, steps):
    """Both float32 from ``start`` (numpy leaves): mur's server through
    mur.optax (additive rule, ``hypers``) and ``tx_ref``, ``steps`` steps each
    over the same theta-dependent gradient. Returns (got, want): the
    parameters after each step."""
    import jax.numpy as jnp

    import mur.optax

    params = {k: jnp.asarray(v) for k, v in start.items()}
    want, _ = run_optax(tx_ref, params, steps)
    tx = mur.optax.remote(name, "additive", server=server, **hypers)
    try:
        got, _ = run_optax(tx, params, steps)
    finally:
        tx.close()
    return got, want


def assert_within(got, want, bound):
    """Every leaf after every step within ``bound`` (1 + |want|) of the reference."""
    for t, (g, w) in enumerate(zip(got, want)):
        for k in w:
            err = np.abs(g[k] - w[k])
            assert np.all(err <= bound * (1 + np.abs(w[k]))), (t + 1, k, float(err.max()))
