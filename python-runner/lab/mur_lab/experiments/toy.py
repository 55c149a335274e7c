"""2-D toy problems (the paper's Rosenbrock and a convex quadratic): one run
of 100 server steps from the start, and what is measured on its path."""

import math

import torch

from mur_lab.experiments import spaces

ITERATIONS = 100


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
    "rosenbrock": {
        "f": rosenbrock,
        "start": (-1.0, 1.5),
        "minimum": (1.0, 1.0),
        "formula": "(1 - x)^2 + 100 (y - x^2)^2",
        "window": ((-2.0, 2.0), (-1.0, 3.0)),
    },
    "convex": {
        "f": convex,
        "start": (1 + _D, 2 + _D),
        "minimum": (1.0, 2.0),
        "formula": "0.5 ((x - 1)^2 + 10 (y - 2)^2)",
        "window": ((-5.0, 55.0), (-5.0, 58.0)),
    },
}

OPTIMIZERS = ["sgd", "sgd+momentum", "adagrad", "adam", "rmsprop"]  # names of spaces.OPTIMIZERS
LR_RANGE = (1e-4, 1.0)
# A run "trains" when it ends within TARGET x the start distance, and "faster"
# counts the iterations until it first gets there (fixed before the full run).
TARGET = 0.1


def run(problem, optimizer, rule, config, address, iterations=ITERATIONS, seed=0):
    """The trajectory [(x, y), ...] of `iterations` server steps from the start;
    a diverged run ends with (inf, inf)."""
    prob = PROBLEMS[problem]
    p = torch.nn.Parameter(torch.tensor(prob["start"], dtype=torch.float32))
    opt, sched = spaces.make([p], optimizer, rule, config, address, iterations, seed)
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
            if sched is not None:
                sched.step()
            path.append(tuple(p.tolist()))
            if not all(map(math.isfinite, path[-1])):
                path[-1] = (math.inf, math.inf)
                break
    finally:
        opt.close()
    return path


def distance(problem, point):
    m = PROBLEMS[problem]["minimum"]
    d = math.hypot(point[0] - m[0], point[1] - m[1])
    return d if math.isfinite(d) else float("inf")


def start_distance(problem):
    return distance(problem, PROBLEMS[problem]["start"])


def relative(problem, path):
    """Final distance / start distance (inf: diverged)."""
    return distance(problem, path[-1]) / start_distance(problem)


def score(problem, path):
    """Tuning objective, higher is better: -log10 of the relative final
    distance; None when diverged. A distance of exactly 0 scores 30 (the
    floor 1e-30 only orders it first)."""
    r = relative(problem, path)
    return None if math.isinf(r) else -math.log10(max(r, 1e-30))


def iterations_to_target(problem, path):
    """The first iteration within TARGET x the start distance, or None."""
    lim = TARGET * start_distance(problem)
    return next((i for i, xy in enumerate(path) if distance(problem, xy) <= lim), None)
