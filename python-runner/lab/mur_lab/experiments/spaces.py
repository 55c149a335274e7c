"""The search spaces of the tuning, one per rule, and how a configuration
becomes a RemoteOptimizer (plus a gamma scheduler from mur.schedulers).

Every rule gets the same kind of space: its own step sizes, log-uniform, and
for hybrid gamma and a gamma schedule. The spaces are written once, in
`suggest`, for an Optuna trial; `RandomTrial` offers the same two methods so
that the robustness samples come from exactly the same distributions.
"""

import math
import random

import mur
from mur import schedulers

RULES = ["additive", "multiplicative", "hybrid"]
FACTORS = [1 / 30, 1 / 10, 1 / 3, 1.0, 3.0, 10.0, 30.0]  # the learning-rate sweep, times the tuned lr and lr_out
SCHEDULES = ["constant", "decay", "inverse", "random"]
LR_IN = (0.1, 10.0)
LR_OUT = (1e-3, 1.0)  # below 1: the multiplicative term never flips a weight's sign (docs/update-rules.md)
DECAY_RATE = (1e-3, 0.1)  # 1 - factor of one scheduler move (one move per optimizer step)
PATIENCE = (0.0, 0.5)  # steps before the first move, as a fraction of the run

# name -> (mur optimizer, fixed hyperparameters); "sgd+momentum" is the paper's
# Rosenbrock setting (SGD with momentum 0.9).
OPTIMIZERS = {
    "sgd": ("sgd", {}),
    "sgd+momentum": ("sgd", {"momentum": 0.9}),
    "adagrad": ("adagrad", {}),
    "adam": ("adam", {}),
    "rmsprop": ("rmsprop", {}),
}


def describe(rule, lr_range):
    """The space in words, for the report."""
    lr = f"lr log-uniform in [{lr_range[0]:g}, {lr_range[1]:g}]"
    rates = f"lr_in log-uniform in [{LR_IN[0]:g}, {LR_IN[1]:g}], lr_out log-uniform in [{LR_OUT[0]:g}, {LR_OUT[1]:g}]"
    if rule == "additive":
        return lr
    if rule == "multiplicative":
        return rates + " (lr unused by this rule)"
    return (
        f"{lr}, {rates}, gamma uniform in [0, 1], schedule one of {'/'.join(SCHEDULES)} (decay and inverse: "
        f"1 - factor log-uniform in [{DECAY_RATE[0]:g}, {DECAY_RATE[1]:g}] per step after a patience uniform in "
        f"[{PATIENCE[0]:g}, {PATIENCE[1]:g}] of the run; random: gamma ~ U[0, 1] every step)"
    )


def suggest(trial, rule, lr_range):
    """One configuration from `trial` (an optuna.Trial or a RandomTrial)."""
    c = {}
    if rule != "multiplicative":
        c["lr"] = trial.suggest_float("lr", *lr_range, log=True)
    if rule != "additive":
        c["lr_in"] = trial.suggest_float("lr_in", *LR_IN, log=True)
        c["lr_out"] = trial.suggest_float("lr_out", *LR_OUT, log=True)
    if rule == "hybrid":
        c["gamma"] = trial.suggest_float("gamma", 0.0, 1.0)
        c["schedule"] = trial.suggest_categorical("schedule", SCHEDULES)
        if c["schedule"] in ("decay", "inverse"):
            c["decay_rate"] = trial.suggest_float("decay_rate", *DECAY_RATE, log=True)
            c["patience"] = trial.suggest_float("patience", *PATIENCE)
    return c


class RandomTrial:
    """The two suggest methods of an optuna.Trial, drawn independently from `rng`."""

    def __init__(self, rng):
        self.rng = rng

    def suggest_float(self, name, low, high, log=False):
        if log:
            return math.exp(self.rng.uniform(math.log(low), math.log(high)))
        return self.rng.uniform(low, high)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(list(choices))


def random_configs(rule, lr_range, n, seed):
    rng = random.Random(seed)
    return [suggest(RandomTrial(rng), rule, lr_range) for _ in range(n)]


def scaled(config, factor):
    """The configuration with its step sizes (lr and lr_out) times factor: the learning-rate sweep."""
    c = dict(config)
    for k in ("lr", "lr_out"):
        if k in c:
            c[k] *= factor
    return c


def hyperparameters(optimizer, rule, config):
    """RemoteOptimizer keyword arguments of a configuration."""
    base, fixed = OPTIMIZERS[optimizer]
    h = dict(fixed)
    if rule == "multiplicative":
        h["lr"] = config["lr_out"]  # unused by the rule; given so that no default hides in the run
    else:
        h["lr"] = config["lr"]
    for k in ("lr_in", "lr_out", "gamma"):
        if k in config:
            h[k] = config[k]
    return base, h


def make(params, optimizer, rule, config, address, total_steps, seed=0):
    """(RemoteOptimizer, gamma scheduler or None) for a run of total_steps steps.
    The scheduler's step() is called after every optimizer step."""
    base, h = hyperparameters(optimizer, rule, config)
    opt = mur.RemoteOptimizer(params, optimizer=base, rule=rule, server=address, **h)
    try:
        sched = None
        kind = config.get("schedule", "constant")
        if kind in ("decay", "inverse"):
            cls = schedulers.ExponentialGammaDecay if kind == "decay" else schedulers.InverseExponentialGamma
            sched = cls(opt, factor=1.0 - config["decay_rate"], patience=int(config["patience"] * total_steps))
        elif kind == "random":
            sched = schedulers.RandomGamma(opt, low=0.0, high=1.0, seed=seed)
    except BaseException:
        opt.close()
        raise
    return opt, sched


def label(config):
    """A short legend text: the chosen hyperparameters."""
    parts = [f"{k}={config[k]:.2g}" for k in ("lr", "lr_in", "lr_out", "gamma") if k in config]
    if config.get("schedule", "constant") != "constant":
        s = config["schedule"]
        if s in ("decay", "inverse"):
            s += f"({1 - config['decay_rate']:.3g})"
        parts.append(s)
    return ", ".join(parts)
