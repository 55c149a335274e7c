"""The worst difference between mur's server (additive rule, float32, through
mur.optax) and optax's own transformation (float32) for the algorithms whose
reference implementation is optax's: LAMB, LARS, Lion, Schedule-Free AdamW, and
Adafactor and Muon beside their torch parity. The cases and the trajectory are
the parity tests' (python-runner/tests/test_*optax*.py, test_trust_ratio.py),
whose bounds hold them in CI; this prints the numbers.

    KERAS_BACKEND=jax PYTHONPATH=python-runner:python-runner/lab:python-runner/tests \
        .venv-jax/bin/python python-runner/scripts/optax_parity.py
"""

import importlib

import numpy as np
from optax_trajectory import server_and_optax

import mur

# module: [(optimizer, optax transformation, mur hyperparameters)] from its CASES.
SUITES = {
    "test_trust_ratio": lambda m: [(n, m.optax_of(n, h), h) for n, h in m.CASES],
    "test_adafactor_optax": lambda m: [("adafactor", m.optax_of(h), m.mur_hypers(h)) for h in m.CASES],
    "test_muon_optax": lambda m: [("muon", m.optax_of(h), h) for h in m.CASES],
    "test_schedule_free_optax": lambda m: [("schedule_free_adamw", m.optax_of(h), h) for h in m.CASES],
    "test_lion_optax": lambda m: [("lion", m.optax_of(h), h) for h in m.CASES],
}


def main():
    worst = {}
    with mur.LocalServer() as server:
        for module, cases in SUITES.items():
            m = importlib.import_module(module)
            for name, tx_ref, h in cases(m):
                got, want = server_and_optax(tx_ref, name, server.address, h, m.start(np.float32), m.STEPS)
                err = max(float(np.max(np.abs(g[k] - w[k]))) for g, w in zip(got, want) for k in w)
                rel = max(float(np.max(np.abs(g[k] - w[k]) / (1 + np.abs(w[k])))) for g, w in zip(got, want) for k in w)
                a, r = worst.get(name, (0.0, 0.0))
                worst[name] = (max(a, err), max(r, rel))
    print(f"server {server.backend}; float32 both; the parity tests' cases and steps")
    print("| optimizer | worst abs difference | worst abs / (1 + |theta|) |\n|---|---|---|")
    for name, (a, r) in worst.items():
        print(f"| {name} | {a:.2e} | {r:.2e} |")


if __name__ == "__main__":
    main()
