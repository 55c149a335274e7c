"""Golden trajectories of torch.optim.LBFGS for the server's L-BFGS table.

    .venv-torch2/bin/python python-runner/scripts/make_lbfgs_golden.py ts-server/test/golden/torch_lbfgs.json

The problem is a quadratic f(x) = 1/2 x.Q x - c.x + 1/4 sum(x^4) over two
float32 parameters (shapes [4] and [2], flattened in that order). The closure
computes the loss and gradient in float64 from the float32 parameters and
rounds the gradient to float32, exactly as ts-server/test/lbfgs.test.ts does:
both sides then feed the algorithm the same numbers at the same points, and
the trajectories differ only by the algorithm's own float32 arithmetic.
"""

import json
import sys

import numpy as np
import torch

SHAPES = [(4,), (2,)]


def problem():
    rng = np.random.default_rng(20)
    m = rng.standard_normal((6, 6))
    q = m @ m.T / 6 + 0.5 * np.eye(6)
    c = rng.standard_normal(6)
    x0 = rng.standard_normal(6).astype(np.float32)
    return q, c, x0


def loss_grad(q, c, x):
    x = x.astype(np.float64)
    loss = 0.5 * x @ q @ x - c @ x + 0.25 * np.sum(x**4)
    return float(loss), (q @ x - c + x**3).astype(np.float32)


CASES = [
    {"line_search_fn": None},
    {"line_search_fn": "strong_wolfe"},
    {"line_search_fn": None, "lr": 0.5, "max_iter": 4, "history_size": 3},
    {"line_search_fn": "strong_wolfe", "max_iter": 5, "history_size": 2},
    {"line_search_fn": "strong_wolfe", "lr": 3, "max_iter": 3},
    {"line_search_fn": None, "max_iter": 3, "max_eval": 2, "tolerance_change": 1e-3},
]
STEPS = 4


def run(hypers, q, c, x0):
    params = []
    off = 0
    for s in SHAPES:
        n = int(np.prod(s))
        params.append(torch.tensor(x0[off : off + n].reshape(s), requires_grad=True))
        off += n
    opt = torch.optim.LBFGS(params, **hypers)
    evals = [0]

    def closure():
        evals[0] += 1
        x = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
        loss, g = loss_grad(q, c, x)
        off = 0
        for p in params:
            n = p.numel()
            p.grad = torch.from_numpy(g[off : off + n].copy()).reshape(p.shape)
            off += n
        return torch.tensor(loss, dtype=torch.float64)

    trajectory, counts, losses = [], [], []
    for _ in range(STEPS):
        evals[0] = 0
        losses.append(float(opt.step(closure)))
        counts.append(evals[0])
        trajectory.append([float(v) for p in params for v in p.detach().reshape(-1)])
    return trajectory, counts, losses


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "ts-server/test/golden/torch_lbfgs.json"
    q, c, x0 = problem()
    cases = []
    for h in CASES:
        trajectory, counts, losses = run(h, q, c, x0)
        cases.append({"hypers": h, "trajectory": trajectory, "evaluations": counts, "losses": losses})
    doc = {
        "torch_version": torch.__version__,
        "shapes": [list(s) for s in SHAPES],
        "q": q.tolist(),
        "c": c.tolist(),
        "x0": [float(v) for v in x0],
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
