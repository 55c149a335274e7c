"""2-D toy problems: best configuration over a documented grid, and robustness
over random configurations, every step computed by the mur server."""
import itertools
import math
import random

import torch

import mur

ITERATIONS = 100
OPTIMIZERS = ["sgd", "adagrad", "adam", "rmsprop"]
RULES = ["additive", "multiplicative", "hybrid"]


def rosenbrock(p):
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


# The paper does not publish its convex function. Ours: an ill-conditioned
# quadratic (condition number 10) whose minimum (1, 2) is away from the axes,
# started on the diagonal at the paper's start distance 69.26, in the same
# quadrant as the minimum: a purely multiplicative rule cannot change a
# weight's sign, so a start across an axis would be out of its reach.
def convex(p):
    return 0.5 * ((p[0] - 1) ** 2 + 10 * (p[1] - 2) ** 2)


_D = 69.26 / math.sqrt(2)
PROBLEMS = {
    "rosenbrock": {"f": rosenbrock, "start": (-1.0, 1.5), "minimum": (1.0, 1.0),
                   "formula": "(1 - x)^2 + 100 (y - x^2)^2", "window": ((-2.0, 2.0), (-1.0, 3.0))},
    "convex": {"f": convex, "start": (1 + _D, 2 + _D), "minimum": (1.0, 2.0),
               "formula": "0.5 ((x - 1)^2 + 10 (y - 2)^2)", "window": ((-5.0, 55.0), (-5.0, 58.0))},
}

# The grid of the "best configuration" search, per rule (SGD gets momentum 0).
LR = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
LR_IN = [0.1, 1.0, 10.0]
LR_OUT = [1e-3, 1e-2, 0.03, 0.1, 0.3]
GAMMA = [0.5, 0.9, 0.99]


def grid(rule, quick=False):
    """Full: additive 9 rates; multiplicative 3 x 5; hybrid 5 x 2 x 2 x 3 = 60.
    Quick: 5, 5 and 10 points of the same grids."""
    if rule == "additive":
        return [dict(lr=a) for a in (LR[::2] if quick else LR)]
    if rule == "multiplicative":
        return [dict(lr=b, lr_in=i, lr_out=b) for i, b in itertools.product([1.0] if quick else LR_IN, LR_OUT)]
    if quick:
        return [dict(lr=a, lr_in=1.0, lr_out=b, gamma=0.9) for a, b in itertools.product(LR[::2], [1e-2, 0.1])]
    return [dict(lr=a, lr_in=i, lr_out=b, gamma=g)
            for a, i, b, g in itertools.product(LR[::2], LR_IN[1:], LR_OUT[1::2], GAMMA)]


def random_config(rule, rng):
    """The robustness distributions: log-uniform rates, uniform gamma."""
    lu = lambda lo, hi: 10 ** rng.uniform(math.log10(lo), math.log10(hi))  # noqa: E731
    if rule == "additive":
        return dict(lr=lu(1e-4, 1.0))
    if rule == "multiplicative":
        out = lu(1e-3, 0.5)
        return dict(lr=out, lr_in=lu(0.1, 10), lr_out=out)
    return dict(lr=lu(1e-4, 1.0), lr_in=lu(0.1, 10), lr_out=lu(1e-3, 0.5), gamma=rng.uniform(0.5, 1.0))


def run(problem, optimizer, rule, h, address, iterations=ITERATIONS):
    """The trajectory [(x, y), ...] of `iterations` server steps from the start."""
    prob = PROBLEMS[problem]
    p = torch.nn.Parameter(torch.tensor(prob["start"], dtype=torch.float32))
    opt = mur.RemoteOptimizer([p], optimizer=optimizer, rule=rule, server=address, **h)
    path = [tuple(p.tolist())]
    try:
        for _ in range(iterations):
            opt.zero_grad()
            prob["f"](p).backward()
            if not torch.isfinite(p.grad).all():
                # Diverged: the server (rightly) refuses non-finite gradients.
                path.append((math.inf, math.inf))
                break
            opt.step()
            path.append(tuple(p.tolist()))
    finally:
        opt.close()
    return path


def distance(problem, point):
    m = PROBLEMS[problem]["minimum"]
    d = math.hypot(point[0] - m[0], point[1] - m[1])
    return d if math.isfinite(d) else float("inf")


def best_configuration(problem, optimizer, rule, address, quick=False):
    best = None
    for h in grid(rule, quick):
        path = run(problem, optimizer, rule, h, address)
        d = distance(problem, path[-1])
        if best is None or d < best["distance"]:
            best = {"config": h, "distance": d, "path": path}
    return best


def robustness(problem, optimizer, rule, address, n, seed):
    rng = random.Random(seed)
    start = distance(problem, PROBLEMS[problem]["start"])
    rel = []
    for _ in range(n):
        path = run(problem, optimizer, rule, random_config(rule, rng), address)
        rel.append(min(distance(problem, path[-1]) / start, 1e6))  # diverged runs capped
    mean = sum(rel) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in rel) / max(n - 1, 1))
    return {"mean": mean, "sd": sd, "median": sorted(rel)[n // 2], "n": n}
