#!/usr/bin/env python3
"""Golden trajectories of torch.optim, for the additive rule's tests.

Runs each torch.optim optimizer in float64 for 30 steps on one small parameter
whose gradient depends on the parameter (g = 0.6 cos(0.7 i + 0.3 t) + 0.4 theta),
and writes the gradients it saw and the trajectory it took as JSON. The
TypeScript tests replay the gradients through mur and compare.

    python3 python-runner/scripts/make_golden.py ts-server/test/golden/torch_additive.json
"""

import json
import math
import sys

import torch

STEPS = 30
N = 8

CASES = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3}),
    ("adam", {}),
    ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}),
    ("adamw", {}),
    ("adamw", {"lr": 0.01, "amsgrad": True}),
    ("adagrad", {}),
    ("adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.01}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("adamax", {}),
    ("adamax", {"weight_decay": 0.01}),
    ("nadam", {}),
    ("nadam", {"weight_decay": 0.01}),
    ("radam", {}),
    ("radam", {"weight_decay": 0.01}),
    ("adadelta", {}),
    ("adadelta", {"weight_decay": 0.01}),
    ("nadam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("rprop", {}),
    ("rprop", {"lr": 0.05, "etas": [0.3, 1.5], "step_sizes": [1e-3, 0.08]}),
    ("asgd", {}),
    ("asgd", {"lr": 0.05, "lambd": 0.01, "alpha": 0.6, "t0": 10, "weight_decay": 0.01}),
]

TORCH = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adadelta": torch.optim.Adadelta,
    "rprop": torch.optim.Rprop,
    "asgd": torch.optim.ASGD,
}


def _torch_major():
    return int(torch.__version__.split(".")[0])


# Known differences between this torch and the maths mur implements (torch 2.x).
QUIRKS = {
    "nadam": (
        lambda: _torch_major() < 2,
        "torch < 2.0 NAdam multiplies mu_t twice into mu_product_next (fixed in torch 2.0); mur follows torch 2.x",
    ),
}


def _missing(name, hypers):
    """Why this torch cannot run the case (an argument it does not have), or None."""
    import inspect

    absent = [k for k in hypers if k not in inspect.signature(TORCH[name]).parameters]
    if absent:
        return f"torch {torch.__version__} {TORCH[name].__name__} has no {', '.join(absent)} (torch >= 2.2 has)"
    return None


def theta0():
    return [math.sin(1.3 * i + 0.4) * 0.8 + (0.05 if i % 3 == 0 else -0.1) for i in range(N)]


def run(name, hypers):
    missing = _missing(name, hypers)
    if missing:  # recorded without a trajectory: the test skips it and prints why
        return {"optimizer": name, "hypers": hypers, "torch_missing": missing}
    p = torch.tensor(theta0(), dtype=torch.float64, requires_grad=True)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in hypers.items()}
    opt = TORCH[name]([p], **kwargs)
    grads, traj = [], []
    for t in range(1, STEPS + 1):
        with torch.no_grad():
            g = torch.tensor([0.6 * math.cos(0.7 * i + 0.3 * t) for i in range(N)], dtype=torch.float64) + 0.4 * p
        p.grad = g.clone()
        opt.step()
        grads.append(g.tolist())
        traj.append(p.detach().tolist())
    case = {"optimizer": name, "hypers": hypers, "theta0": theta0(), "grads": grads, "trajectory": traj}
    quirk = QUIRKS.get(name)
    if quirk and quirk[0]():
        case["torch_quirk"] = quirk[1]
    return case


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "ts-server/test/golden/torch_additive.json"
    # Scalar state (ASGD's eta and mu, step counts) in float64 like the parameter:
    # torch makes it in the default dtype, float32 unless told.
    torch.set_default_dtype(torch.float64)
    doc = {
        "generator": "python-runner/scripts/make_golden.py",
        "torch_version": torch.__version__,
        "dtype": "float64",
        "steps": STEPS,
        "cases": [run(n, h) for n, h in CASES],
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(doc['cases'])} torch {torch.__version__} trajectories to {out}")


if __name__ == "__main__":
    main()
