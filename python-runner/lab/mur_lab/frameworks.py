"""python -m mur.validate --frameworks torch,optax,keras: the cross-framework matrix.

One small model (an MLP 8-16-4 with tanh, mean squared error on random data),
the same initial weights and the same batches, trained for N steps by each
framework's own optimizer and by mur's additive rule configured to match it,
through that framework's mur client:

    torch      torch.optim.X             mur~torch  mur.RemoteOptimizer
    optax      optax.x                   mur~optax  mur.optax.remote
    keras      keras.optimizers.X (fit)  mur~keras  mur.keras.RemoteOptimizer (fit)

for Adam, AdamW, SGD with momentum (under a learning-rate schedule), RMSprop
and Adagrad, for the whole-tensor LAMB, LARS (under a schedule) and
Schedule-Free AdamW (with a warmup), and for Adafactor and Muon (Muon for the
matrices and AdamW for the biases, the usual recipe: torch.optim.Muon +
AdamW, optax.contrib.muon and keras.optimizers.Muon route the biases to their
AdamW themselves, mur is one session with per-group optimizers through each
client), all with the same hyperparameter values (CONFIGS). A framework
without an optimizer of its own (NOT_IN: torch.optim has no LAMB, LARS or
Schedule-Free; keras no LARS) has no run for it and no pair with one ("n/a"
in the report); mur~F still runs through F's client, which can express every
optimizer here. mur's LAMB, LARS and Schedule-Free follow optax's, its
Adafactor and Muon torch's. torch.optim.Adafactor (torch >= 2.5) and Muon
(>= 2.9) are newer than the matrix venv's torch 1.13: their torch runs are
made by the torch 2.x venv in a subprocess (torch2_runs.py) on the same
problem; without one the torch run is "n/a" with the reason (UNAVAILABLE).
Every run
computes its own gradients with its own framework, so a pair differs by
float32 rounding (different kernels) or by a difference of semantics.
DIFFERENCES names those differences; two runs are expected to agree when they
have the same semantics. "mur~F" is mur with its defaults, i.e. torch's
semantics (values such as Adagrad's initial accumulator or RMSprop's smoothing
constant are set in CONFIGS for every framework). "mur+F" (only where F
differs from torch) is mur with the flags that bridge F's differences
(eps_before_correction, eps_in_sqrt, lr_in_momentum): it has F's semantics, so
it must agree with F, while the difference stays named in its rows.

Each difference is checked by measurement, with the setting that causes it
removed: eps = 0 for the eps placements, a constant learning rate for the
momentum's lr, weight_decay = 0 for LAMB's decay, warmup_steps = 0 for the
Schedule-Free average, eps1 = 0 for Adafactor's, and for Muon nesterov=False,
eps=0, adam_weight_decay=0 and torch's Newton-Schulz in float32 at once
(ABLATIONS; the last is a patch of torch's dtype, since torch has no
setting). Every optimizer is run a second time so ("ablated"), where the
differing pairs must agree too. The command exits 1 when a pair with the same
semantics differs, when a gap does not close in the ablated run (a difference
this table does not explain), or when a named difference makes no gap.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

FRAMEWORKS = ("torch", "optax", "keras")
OPTIMIZERS = (
    "adam",
    "adamw",
    "sgd_momentum",
    "rmsprop",
    "adagrad",
    "lamb",
    "lars",
    "schedule_free_adamw",
    "adafactor",
    "muon",
)

# Which frameworks have each optimizer of their own; the others are "n/a" (no
# run of theirs, and no pair with one). Every framework's mur client expresses
# every optimizer here, so mur~F runs for each F all the same.
NOT_IN = {
    "lamb": {"torch": "torch.optim has no LAMB"},
    "lars": {"torch": "torch.optim has no LARS", "keras": "keras.optimizers has no LARS"},
    "schedule_free_adamw": {"torch": "torch.optim has no Schedule-Free method"},
}


# torch.optim classes newer than some torchs (Adafactor: torch >= 2.5, Muon: >= 2.9). When
# this process's torch lacks one (.venv-jax has Debian's torch 1.13), the torch run is made
# by the torch 2.x venv (`make torch2`) in a subprocess (mur_lab/torch2_runs.py), with the
# same problem and config; without one, the row says n/a and why (UNAVAILABLE).
TORCH_CLASSES = {"adafactor": "Adafactor", "muon": "Muon"}
# {opt: {framework: why}}: runs that could not be made here (filled by matrix()).
UNAVAILABLE: dict = {}


def has(framework, opt):
    """Whether the framework has the optimizer of its own (a run F in the matrix) and it ran here."""
    return framework not in NOT_IN.get(opt, {}) and framework not in UNAVAILABLE.get(opt, {})


def why_not(framework, opt):
    return NOT_IN.get(opt, {}).get(framework) or UNAVAILABLE.get(opt, {}).get(framework)


# The values every framework is given (its own argument names below). They
# differ from some frameworks' defaults on purpose: the defaults are a
# documented difference (docs/frameworks.md), not something to measure.
CONFIGS = {
    "adam": dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-6),
    "adamw": dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1),
    # schedule: lr_k = lr * schedule^k at step k (from 0), so Keras's velocity shows its old rates.
    "sgd_momentum": dict(lr=0.05, momentum=0.9, schedule=0.8),
    "rmsprop": dict(lr=1e-2, decay=0.9, eps=1e-6),
    # eps 1e-3: inside or outside sqrt(0.1 + sum g^2) must make a visible gap.
    "adagrad": dict(lr=0.1, initial_accumulator_value=0.1, eps=1e-3),
    # weight_decay 0.1: keras's (the base optimizer's, outside the trust ratio) must make
    # a visible gap against optax's and mur's (inside it); ablated at weight_decay=0.
    "lamb": dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1),
    # optax's momentum runs after the learning rate (it holds lr-scaled steps), mur's
    # lars divides the step by the current lr: the schedule checks they agree under one.
    # trust_coefficient 1e-2 (optax's default 1e-3): steps of 1% of ||theta||.
    "lars": dict(lr=1.0, momentum=0.9, trust_coefficient=1e-2, weight_decay=1e-2, schedule=0.8),
    # warmup_steps 5 of the 10 --quick steps: keras's warmup and average differ from optax's
    # (and mur's) there; ablated at warmup_steps=0. No weight decay: keras's weight_decay= is
    # the base optimizer's (theta -= lr*wd*theta on y, before the step), optax's is in the
    # base step's direction at y; the table would need a second ablation to name both.
    "schedule_free_adamw": dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, warmup_steps=5),
    # torch's: lr caps the relative step min(lr, 1/sqrt(t)); eps1 1e-3 (torch's default: the
    # dtype's machine eps) so that optax's and keras's placement (added to g^2, not a clamp)
    # makes a visible gap; ablated at eps1=0. No weight decay: torch decays after rms(theta),
    # keras before it (the base optimizer's), optax adds lr*wd*theta: a second ablation.
    "adafactor": dict(lr=1e-2, beta2_decay=-0.8, eps1=1e-3, eps2=1e-3, d=1.0),
    # Muon (torch's match_rms_adamw scaling, keras's rms_rate=0.2, optax's consistent_rms=0.2)
    # for the matrices, AdamW for the biases (adam_*), the usual recipe. eps is optax's single
    # eps (its Newton-Schulz and its Adam), keras's epsilon (its Adam; its NS adds 1e-7) and
    # torch's for both. torch_ns: the dtype torch's Newton-Schulz runs in (its code: bfloat16);
    # the ablation runs torch's own code with float32 there (a patch: torch has no setting).
    "muon": dict(
        lr=0.02,
        momentum=0.95,
        nesterov=True,
        weight_decay=0.1,
        eps=1e-7,
        adam_lr=3e-3,
        b1=0.9,
        b2=0.999,
        adam_weight_decay=0.01,
        torch_ns="bfloat16",
    ),
}

# Known semantic differences, by the name the report uses. Each entry: which
# (framework, optimizer) have it, the formula, the mur flags that reproduce it
# (bridge: the flags, and the optimizers that have them), and what removes it
# (ablation: "eps=0" or "constant lr").
DIFFERENCES = {
    "eps_before_bias_correction": dict(
        where={("keras", "adam"), ("keras", "adamw"), ("keras", "muon")},
        formula="keras: theta -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps); torch/optax/mur: "
        "theta -= lr/(1-b1^t) * m/(sqrt(v)/sqrt(1-b2^t)+eps), i.e. keras's eps is eps/sqrt(1-b2^t) in torch's "
        "formula (31.6x eps at t=1); keras's Muon's AdamW (the biases) too",
        bridge=dict(eps_before_correction=True),
        bridge_in={"adam", "adamw", "muon"},  # muon: on its AdamW group
        ablation="eps=0",
    ),
    "eps_inside_sqrt": dict(
        where={("optax", "rmsprop"), ("keras", "rmsprop"), ("optax", "adagrad"), ("keras", "adagrad")},
        formula="optax (rmsprop's default eps_in_sqrt=True; adagrad always) and keras: g / sqrt(v + eps); "
        "torch/mur: g / (sqrt(v) + eps)",
        bridge=dict(eps_in_sqrt=True),
        bridge_in={"rmsprop", "adagrad"},
        ablation="eps=0",
    ),
    "velocity_includes_lr": dict(
        where={("keras", "sgd_momentum")},
        formula="keras: v = momentum*v - lr*g; theta += v; torch/optax/mur: buf = momentum*buf + g; theta -= lr*buf. "
        "The same at a constant lr; under an lr schedule keras's velocity keeps the rates of past steps "
        "(keras's and optax's RMSprop with momentum too)",
        bridge=dict(lr_in_momentum=True),
        bridge_in={"sgd_momentum", "rmsprop"},
        ablation="constant lr",
    ),
    "decay_outside_trust_ratio": dict(
        where={("keras", "lamb")},
        formula="keras (the base optimizer's weight_decay=): theta *= 1 - lr*wd, then theta -= lr*r*u with "
        "u = m^/(sqrt(v^)+eps) and r = ||theta||/||u||; optax/mur: u = m^/(sqrt(v^)+eps) + wd*theta, "
        "then theta -= lr*r*u (the decay is inside the trust ratio)",
        bridge={},
        bridge_in=set(),
        ablation="weight_decay=0",
    ),
    "uniform_average_warmup_at_t": dict(
        where={("keras", "schedule_free_adamw")},
        formula="keras: z -= lr*min(t/W, 1)*g/(sqrt(v^)+eps), x averaged with weight 1/t; optax/mur: "
        "z -= lr*min((t-1)/W, 1)*g/(sqrt(v^)+eps) (the base step's count starts at 0), weight "
        "c_t = l_t^2/sum_k l_k^2 with l_t = lr*min(t/W, 1). The same at W = warmup_steps = 0",
        bridge={},
        bridge_in=set(),
        ablation="warmup_steps=0",
    ),
}

DIFFERENCES.update(
    {
        "eps1_added_to_g2": dict(
            where={("optax", "adafactor"), ("keras", "adafactor")},
            formula="optax, keras: row/col/vector means of g^2 + eps1, u = g/sqrt(v); torch/mur: means of g^2, "
            "u = g/sqrt(max(v, eps1^2)), the row mean clamped at eps1 (a bound on v, not a shift of g^2). The "
            "same where g^2 >> eps1 (optax's and keras's default eps1 is 1e-30)",
            bridge={},
            bridge_in=set(),
            ablation="eps1=0",
        ),
        "newton_schulz_in_bfloat16": dict(
            where={("torch", "muon")},
            formula="torch.optim.Muon runs its Newton-Schulz iteration in bfloat16 (8-bit mantissa); mur in "
            "float32, optax and keras in the parameters' dtype (float32). No setting changes it: the ablation "
            "runs torch's own code with float32 in place of bfloat16",
            bridge={},
            bridge_in=set(),
            ablation="torch_ns=float32",
            not_in_mur=True,  # mur follows torch's maths, at a higher precision
        ),
        "adam_decay_at_muon_lr": dict(
            where={("keras", "muon")},
            formula="keras.optimizers.Muon decays its AdamW variables (the biases) by lr*adam_weight_decay, lr "
            "being Muon's rate, while their Adam step is at lr*adam_lr_ratio; torch's recipe (an AdamW of its "
            "own), optax (adamw at adam_learning_rate) and mur's AdamW group: adam_lr*adam_weight_decay",
            # Not a flag: the AdamW group's weight_decay, scaled (mur+F sets it).
            bridge={"weight_decay": "adam_weight_decay*lr/adam_lr"},
            bridge_in={"muon"},
            ablation="adam_weight_decay=0",
        ),
        "nesterov_bias_corrected": dict(
            where={("optax", "muon")},
            formula="optax.contrib.muon: nesterov blends the bias-corrected momentum and gradient, "
            "b*mu/(1-b^(t+1)) + (1-b)*g/(1-b^t), and makes its Adam part Nesterov too (NAdamW on the "
            "biases); torch/keras/mur: lerp(g, buf, b) (keras: g + b*m with m = buf/(1-b), the same direction "
            "after the normalisation), AdamW. The same at nesterov=False",
            bridge={},
            bridge_in=set(),
            ablation="nesterov=False",
        ),
    }
)

# What an optimizer's ablated run removes, where it is not eps (the default when
# the optimizer has one) or the lr schedule: the setting its named difference needs
# (several, comma-separated, when its frameworks differ in several ways).
ABLATIONS = {
    "lamb": "weight_decay=0",
    "schedule_free_adamw": "warmup_steps=0",
    "adafactor": "eps1=0",
    "muon": "nesterov=False, eps=0, adam_weight_decay=0, torch_ns=float32",
}

# Defaults that differ (documented; CONFIGS sets them equal).
DEFAULT_DIFFERENCES = [
    ("adam eps", "torch 1e-8, optax 1e-8, keras 1e-7, mur 1e-8", "eps="),
    ("adamw weight_decay", "torch 1e-2, optax 1e-4, keras 4e-3, mur 1e-2", "weight_decay="),
    ("rmsprop smoothing", "torch alpha 0.99, optax decay 0.9, keras rho 0.9, mur alpha 0.99", "alpha="),
    (
        "rmsprop eps",
        "torch 1e-8, optax 1e-8 (inside sqrt), keras 1e-7 (inside sqrt), mur 1e-8",
        "eps= (placement: eps_in_sqrt=True)",
    ),
    ("adagrad initial accumulator", "torch 0, optax 0.1, keras 0.1, mur 0", "initial_accumulator_value="),
    (
        "adagrad eps",
        "torch 1e-10, optax 1e-7 (inside sqrt), keras 1e-7 (inside sqrt), mur 1e-10",
        "eps= (placement: eps_in_sqrt=True)",
    ),
    ("sgd lr", "torch 1e-3 (>= 2.2), optax required, keras 1e-2, mur required", "lr="),
    ("lamb lr", "optax required, keras 1e-3, mur required (torch: no LAMB)", "lr="),
    ("lamb weight_decay", "optax 0, keras None (0), mur 0", "weight_decay="),
    ("schedule_free_adamw warmup_steps", "optax None (0), keras 0, mur 0", "warmup_steps="),
    (
        "adafactor relative step",
        "torch, keras (relative_step=True), mur: min(lr, 1/sqrt(t)); optax: the rate as given "
        "(the matrix passes optax the schedule count -> min(lr, 1/sqrt(count + 1)))",
        "lr=",
    ),
    (
        "adafactor factoring",
        "torch, keras, mur: every tensor of 2+ dims; optax: dims >= 128 only (min_dim_size_to_factor=128; "
        "the matrix sets 1)",
        "(always factored)",
    ),
    (
        "adafactor eps1",
        "torch None (float32: 1.2e-7, a clamp), optax 1e-30, keras 1e-30 (added to g^2)",
        "eps=(eps1, eps2)",
    ),
    (
        "muon weight axes",
        "torch, mur: (out, in); optax: (in, out) by default (the matrix's params are torch's (out, in): "
        "MuonDimensionNumbers(reduction_axis=1, output_axis=0)); keras kernels are (in, out)",
        "(out, in)",
    ),
    (
        "muon scaling",
        "torch adjust_lr_fn None (sqrt(max(1, A/B))), optax none (consistent_rms=None), keras rms_rate 0.2; "
        "the matrix uses 0.2 sqrt(max(A, B)) everywhere (torch's match_rms_adamw, optax's consistent_rms=0.2)",
        "adjust_lr_fn=",
    ),
    (
        "muon weight_decay / eps",
        "torch 0.1 / 1e-7, optax 0 / 1e-8 (one eps for NS and Adam), keras 0.004 / 1e-7 (Adam; NS 1e-7 fixed), "
        "mur 0.1 / 1e-7",
        "weight_decay=, eps=",
    ),
]


def semantics(run):
    """Whose formulas a run follows: mur~F torch's (mur's defaults), mur+F F's (mur with F's bridges)."""
    if run.startswith("mur~"):
        return "torch"
    return run[4:] if run.startswith("mur+") else run


def _has_difference(run, opt, d):
    if d.get("not_in_mur") and run.startswith("mur"):  # torch's, where mur does not follow it
        return False
    return (semantics(run), opt) in d["where"]


def differences(a, b, opt):
    """The named semantic differences between runs a and b (e.g. "keras",
    "mur~optax", "mur+keras") for an optimizer."""
    return sorted(n for n, d in DIFFERENCES.items() if _has_difference(a, opt, d) != _has_difference(b, opt, d))


def bridges(framework, opt):
    """{difference: flags} of F's differences from torch for an optimizer: what
    mur+F sets. Empty when F has none, or when mur has no flag for one of them
    (mur+F would not have F's semantics: no such run)."""
    names = [n for n, d in DIFFERENCES.items() if (framework, opt) in d["where"]]
    if not all(opt in DIFFERENCES[n]["bridge_in"] for n in names):
        return {}
    return {n: DIFFERENCES[n]["bridge"] for n in names}


def bridged(a, b, opt):
    """The differences a mur+F run of the pair bridges (named in its rows)."""
    return sorted({n for r in (a, b) if r.startswith("mur+") for n in bridges(r[4:], opt)})


def ablation(opt):
    """The setting the ablated run removes: ABLATIONS', else eps (when the optimizer has one) or the lr schedule."""
    if opt in ABLATIONS:
        return ABLATIONS[opt]
    return "eps=0" if "eps" in CONFIGS[opt] else "constant lr" if "schedule" in CONFIGS[opt] else None


def ablated(opt, c):
    at = ablation(opt)
    if at == "constant lr":
        return {k: v for k, v in c.items() if k != "schedule"}
    c = dict(c)
    for setting in at.split(", "):  # "eps=0", "nesterov=False", "torch_ns=float32"
        key, value = setting.split("=")
        old = c[key]
        c[key] = (value == "True") if isinstance(old, bool) else type(old)(value)
    return c


# Tolerance on max|a - b| / max|a| after N steps for runs that should agree.
# Each run computes its own float32 gradients (torch, XLA through jax.grad and
# through keras fit): matmul and tanh kernels round differently (~1e-7 relative
# per step); Adam-type directions can amplify that where |g| is near the
# gradient noise. Measured worst over 20 steps, every pair with the same
# semantics, every optimizer, eps as in CONFIGS and 0: 3.1e-6 (optax's adamw
# against any other: optax divides by bc1 and bc2 before the sqrt, torch and
# mur after it; the other pairs stay below 6e-7). The bridged pairs (F vs
# mur+F) are held to the same bound: their formulas are F's, in another order
# (measured worst: 3.2e-6, keras's AdamW against mur+keras).
# LAMB, LARS and Schedule-Free AdamW keep the same bound: measured worst over
# 20 steps (and 10, --quick), both variants, 2.4e-6 (schedule_free_adamw, optax
# against mur~optax; lamb 1.5e-7, lars 1.9e-7); their named differences make
# 7.1e-3 (lamb) and 2.0e-2 (schedule_free_adamw) or more.
# Adafactor and Muon (--quick, 10 steps) keep it too: Adafactor's same-semantics pairs
# 8.2e-8 (torch 2.15's in the subprocess against mur and the configured optax and keras);
# Muon + AdamW 8.1e-7 (keras's against mur's, ablated run; Newton-Schulz amplifies float32
# rounding by up to a^ns_steps, docs/update-rules.md muon, here well under it), torch's with
# its Newton-Schulz in float32 3.3e-7. Their named differences make 1.5e-3 or more (the
# smallest alone: keras's AdamW eps, 6.1e-5, 3x above the bound).
# 2e-5 leaves a 6x margin; the smallest gap a named difference makes here is
# 4.1e-4 (adagrad), 20x above it.
TOLERANCE = 2e-5


# -- the model and the data ----------------------------------------------------------------------
def problem(steps, batch=16, seed=0):
    """Initial weights (torch layout: W is out x in) and the batches, float32."""
    rng = np.random.default_rng(seed)

    def layer(n_in, n_out):
        k = 1 / np.sqrt(n_in)
        return rng.uniform(-k, k, (n_out, n_in)).astype(np.float32), rng.uniform(-k, k, n_out).astype(np.float32)

    w1, b1 = layer(8, 16)
    w2, b2 = layer(16, 4)
    x = rng.normal(size=(steps * batch, 8)).astype(np.float32)
    # A smooth target the model can partly fit, plus noise: gradients stay O(0.1).
    y = (np.tanh(x[:, :4] * 0.8) + 0.1 * rng.normal(size=(steps * batch, 4))).astype(np.float32)
    return {"params": [w1, b1, w2, b2], "x": x, "y": y, "batch": batch, "steps": steps}


def lr_at(c, k):
    """The learning rate of step k (from 0): CONFIGS' lr, times schedule^k when it has one."""
    return c["lr"] * c.get("schedule", 1.0) ** k


def _mur_hypers(opt, c, framework=None):
    """mur's names for CONFIGS[opt] (mur follows torch's), plus the flags that
    bridge the framework's differences (mur+F)."""
    name, h = _mur_hypers_torch(opt, c)
    for flags in (bridges(framework, opt) if framework else {}).values():
        h.update(flags)
    return name, h


def _mur_hypers_torch(opt, c):
    if opt in ("adam", "adamw"):
        h = dict(lr=c["lr"], betas=(c["b1"], c["b2"]), eps=c["eps"])
        if opt == "adamw":
            h["weight_decay"] = c["weight_decay"]
        return "adamw" if opt == "adamw" else "adam", h
    if opt == "sgd_momentum":
        return "sgd", dict(lr=c["lr"], momentum=c["momentum"])
    if opt == "lamb":  # mur follows optax here, in torch's spelling
        return opt, dict(lr=c["lr"], betas=(c["b1"], c["b2"]), eps=c["eps"], weight_decay=c["weight_decay"])
    if opt == "schedule_free_adamw":
        return opt, dict(lr=c["lr"], betas=(c["b1"], c["b2"]), eps=c["eps"], warmup_steps=c["warmup_steps"])
    if opt == "lars":
        return "lars", {k: c[k] for k in ("lr", "momentum", "trust_coefficient", "weight_decay")}
    if opt == "rmsprop":
        return "rmsprop", dict(lr=c["lr"], alpha=c["decay"], eps=c["eps"])
    if opt == "adafactor":
        return opt, dict(lr=c["lr"], beta2_decay=c["beta2_decay"], eps=(c["eps1"], c["eps2"]), d=c["d"])
    return "adagrad", dict(lr=c["lr"], initial_accumulator_value=c["initial_accumulator_value"], eps=c["eps"])


# -- one run per framework ----------------------------------------------------------------------
def run_torch(prob, opt, c, address=None, bridge=None):
    import torch
    from torch import nn

    import mur

    w1, b1, w2, b2 = (torch.from_numpy(a.copy()) for a in prob["params"])
    params = [nn.Parameter(t) for t in (w1, b1, w2, b2)]
    mats, vecs = [params[0], params[2]], [params[1], params[3]]
    extra = []  # the usual Muon recipe's second optimizer (AdamW for the biases)

    def restore():
        pass

    if address is not None and opt == "muon":
        muon, adam = _muon_hypers(c, bridge)
        o = mur.RemoteOptimizer(
            [{"params": mats, "optimizer": "muon", **muon}, {"params": vecs, "optimizer": "adamw", **adam}],
            optimizer="muon",
            rule="additive",
            server=address,
        )
    elif address is not None:
        name, h = _mur_hypers(opt, c, bridge)
        o = mur.RemoteOptimizer(params, optimizer=name, rule="additive", server=address, **h)
    elif opt == "adafactor":
        o = torch.optim.Adafactor(
            params, lr=c["lr"], beta2_decay=c["beta2_decay"], eps=(c["eps1"], c["eps2"]), d=c["d"], weight_decay=0.0
        )
    elif opt == "muon":
        import torch.optim._muon as muon_module

        o = torch.optim.Muon(
            mats,
            lr=c["lr"],
            weight_decay=c["weight_decay"],
            momentum=c["momentum"],
            nesterov=c["nesterov"],
            eps=c["eps"],
            adjust_lr_fn="match_rms_adamw",
        )
        extra = [
            torch.optim.AdamW(
                vecs, lr=c["adam_lr"], betas=(c["b1"], c["b2"]), eps=c["eps"], weight_decay=c["adam_weight_decay"]
            )
        ]
        if c["torch_ns"] != "bfloat16":
            muon_module.torch = _TorchWith(torch, getattr(torch, c["torch_ns"]))

            def restore():
                muon_module.torch = torch

    elif opt == "adam":
        o = torch.optim.Adam(params, lr=c["lr"], betas=(c["b1"], c["b2"]), eps=c["eps"])
    elif opt == "adamw":
        o = torch.optim.AdamW(
            params, lr=c["lr"], betas=(c["b1"], c["b2"]), eps=c["eps"], weight_decay=c["weight_decay"]
        )
    elif opt == "sgd_momentum":
        o = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"])
    elif opt == "rmsprop":
        o = torch.optim.RMSprop(params, lr=c["lr"], alpha=c["decay"], eps=c["eps"])
    elif opt == "adagrad":
        o = torch.optim.Adagrad(
            params, lr=c["lr"], initial_accumulator_value=c["initial_accumulator_value"], eps=c["eps"]
        )
    else:
        raise ValueError(f"torch has no {opt}: {NOT_IN[opt]['torch']}")
    opts = [o, *extra]
    x, y, bs = torch.from_numpy(prob["x"]), torch.from_numpy(prob["y"]), prob["batch"]
    try:
        for k in range(prob["steps"]):
            xb, yb = x[k * bs : (k + 1) * bs], y[k * bs : (k + 1) * bs]
            for o in opts:
                if "schedule" in c:
                    for group in o.param_groups:  # the schedule, as a torch scheduler sets it
                        group["lr"] = lr_at(c, k)
                o.zero_grad()
            out = torch.tanh(xb @ params[0].T + params[1]) @ params[2].T + params[3]
            ((out - yb) ** 2).mean().backward()
            for o in opts:
                o.step()
        return [p.detach().numpy().copy() for p in params]
    finally:
        if address is not None:
            o.close()
        restore()


class _TorchWith:
    """torch, with its bfloat16 standing for another dtype: torch.optim.Muon's
    _zeropower_via_newtonschulz then runs its own maths in that dtype (the
    Muon ablation; tests/test_muon.py does the same)."""

    def __init__(self, torch, dtype):
        self._torch, self.bfloat16 = torch, dtype

    def __getattr__(self, name):
        return getattr(self._torch, name)


def _muon_hypers(c, framework=None):
    """mur's muon group and AdamW group (the biases) for CONFIGS["muon"], with
    F's bridges on the AdamW group (mur+F)."""
    muon = dict(
        lr=c["lr"],
        momentum=c["momentum"],
        nesterov=c["nesterov"],
        weight_decay=c["weight_decay"],
        eps=c["eps"],
        adjust_lr_fn="match_rms_adamw",
    )
    adam = dict(lr=c["adam_lr"], betas=(c["b1"], c["b2"]), eps=c["eps"], weight_decay=c["adam_weight_decay"])
    for name, flags in (bridges(framework, "muon") if framework else {}).items():
        if name == "adam_decay_at_muon_lr":  # keras's decay, at Muon's rate, as the group's own weight_decay
            adam["weight_decay"] = c["adam_weight_decay"] * c["lr"] / c["adam_lr"]
        else:
            adam.update(flags)
    return muon, adam


def run_optax(prob, opt, c, address=None, bridge=None):
    import jax
    import jax.numpy as jnp
    import optax
    import optax.contrib

    import mur.optax

    names = ("w1", "b1", "w2", "b2")
    params = {n: jnp.asarray(a) for n, a in zip(names, prob["params"])}
    lr = (lambda count: lr_at(c, count)) if "schedule" in c else c["lr"]  # optax's contract: count -> lr
    if address is not None and opt == "muon":
        muon, adam = _muon_hypers(c, bridge)
        tx = mur.optax.remote(
            "muon",
            rule="additive",
            server=address,
            groups={"muon": {}, "adam": {"optimizer": "adamw", **adam}},
            param_labels=lambda p: jax.tree_util.tree_map(lambda x: "muon" if x.ndim == 2 else "adam", p),
            **muon,
        )
    elif address is not None:
        name, h = _mur_hypers(opt, c, bridge)
        tx = mur.optax.remote(name, rule="additive", server=address, **{**h, "lr": lr})
    elif opt == "adam":
        tx = optax.adam(c["lr"], b1=c["b1"], b2=c["b2"], eps=c["eps"])
    elif opt == "adamw":
        tx = optax.adamw(c["lr"], b1=c["b1"], b2=c["b2"], eps=c["eps"], weight_decay=c["weight_decay"])
    elif opt == "sgd_momentum":
        tx = optax.sgd(lr, momentum=c["momentum"])
    elif opt == "rmsprop":
        tx = optax.rmsprop(c["lr"], decay=c["decay"], eps=c["eps"])  # optax's default eps_in_sqrt=True
    elif opt == "adagrad":
        tx = optax.adagrad(c["lr"], initial_accumulator_value=c["initial_accumulator_value"], eps=c["eps"])
    elif opt == "lamb":
        tx = optax.lamb(c["lr"], b1=c["b1"], b2=c["b2"], eps=c["eps"], weight_decay=c["weight_decay"])
    elif opt == "lars":
        tx = optax.lars(
            lr, weight_decay=c["weight_decay"], trust_coefficient=c["trust_coefficient"], momentum=c["momentum"]
        )
    elif opt == "adafactor":  # configured to torch's algorithm (DEFAULT_DIFFERENCES), eps1 aside
        tx = optax.adafactor(
            learning_rate=lambda count: jnp.minimum(c["lr"], 1 / jnp.sqrt(count + 1.0)),
            min_dim_size_to_factor=1,
            decay_rate=-c["beta2_decay"],
            clipping_threshold=c["d"],
            multiply_by_parameter_scale=True,
            eps=c["eps1"],
        )
        assert c["eps2"] == 1e-3  # optax's fixed min_scale
    elif opt == "muon":
        # The params are torch's (out, in): optax is told which axis is which.
        dims = optax.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=0)
        tx = optax.contrib.muon(
            c["lr"],
            beta=c["momentum"],
            eps=c["eps"],
            weight_decay=c["weight_decay"],
            nesterov=c["nesterov"],
            adam_b1=c["b1"],
            adam_b2=c["b2"],
            adam_weight_decay=c["adam_weight_decay"],
            adam_learning_rate=c["adam_lr"],
            muon_weight_dimension_numbers={"w1": dims, "b1": None, "w2": dims, "b2": None},
            consistent_rms=0.2,
        )
    else:  # the params are y, where the gradients are taken (mur's theta)
        tx = optax.contrib.schedule_free_adamw(
            c["lr"], warmup_steps=c["warmup_steps"] or None, b1=c["b1"], b2=c["b2"], eps=c["eps"]
        )

    @jax.jit
    def grad(p, xb, yb):
        def loss(p):
            out = jnp.tanh(xb @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
            return jnp.mean((out - yb) ** 2)

        return jax.grad(loss)(p)

    bs = prob["batch"]
    try:
        state = tx.init(params)
        for k in range(prob["steps"]):
            g = grad(params, prob["x"][k * bs : (k + 1) * bs], prob["y"][k * bs : (k + 1) * bs])
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
        return [np.asarray(params[n]).copy() for n in names]
    finally:
        if address is not None:
            tx.close()


def run_keras(prob, opt, c, address=None, bridge=None):
    keras = _keras()
    import mur.keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(4)])
    w1, b1, w2, b2 = prob["params"]
    model.set_weights([w1.T, b1, w2.T, b2])
    # lr * schedule^iterations, evaluated by Keras (and by mur.keras) at each step.
    lr = (
        keras.optimizers.schedules.ExponentialDecay(c["lr"], decay_steps=1, decay_rate=c["schedule"])
        if "schedule" in c
        else c["lr"]
    )
    if address is not None and opt == "muon":
        muon, adam = _muon_hypers(c, bridge)
        o = mur.keras.RemoteOptimizer(
            "muon",
            rule="additive",
            learning_rate=muon.pop("lr"),
            server=address,
            groups={"muon": {}, "adam": {"optimizer": "adamw", "learning_rate": adam.pop("lr"), **adam}},
            param_labels=lambda v: "muon" if len(v.shape) == 2 else "adam",
            **muon,
        )
    elif address is not None:
        name, h = _mur_hypers(opt, c, bridge)
        h.pop("lr")
        o = mur.keras.RemoteOptimizer(name, rule="additive", learning_rate=lr, server=address, **h)
    elif opt == "adam":
        o = keras.optimizers.Adam(c["lr"], beta_1=c["b1"], beta_2=c["b2"], epsilon=c["eps"])
    elif opt == "adamw":
        o = keras.optimizers.AdamW(
            c["lr"], weight_decay=c["weight_decay"], beta_1=c["b1"], beta_2=c["b2"], epsilon=c["eps"]
        )
    elif opt == "sgd_momentum":
        o = keras.optimizers.SGD(lr, momentum=c["momentum"])
    elif opt == "rmsprop":
        o = keras.optimizers.RMSprop(c["lr"], rho=c["decay"], epsilon=c["eps"])
    elif opt == "adagrad":
        o = keras.optimizers.Adagrad(
            c["lr"], initial_accumulator_value=c["initial_accumulator_value"], epsilon=c["eps"]
        )
    elif opt == "lamb":
        o = keras.optimizers.Lamb(
            c["lr"], beta_1=c["b1"], beta_2=c["b2"], epsilon=c["eps"], weight_decay=c["weight_decay"] or None
        )
    elif opt == "adafactor":  # relative_step=True: torch's min(lr, 1/sqrt(t))
        o = keras.optimizers.Adafactor(
            c["lr"],
            beta_2_decay=c["beta2_decay"],
            epsilon_1=c["eps1"],
            epsilon_2=c["eps2"],
            clip_threshold=c["d"],
            relative_step=True,
        )
    elif opt == "muon":  # rms_rate 0.2: torch's match_rms_adamw; its AdamW for the biases
        o = keras.optimizers.Muon(
            c["lr"],
            adam_beta_1=c["b1"],
            adam_beta_2=c["b2"],
            adam_weight_decay=c["adam_weight_decay"],
            epsilon=c["eps"],
            weight_decay=c["weight_decay"],
            adam_lr_ratio=c["adam_lr"] / c["lr"],
            momentum=c["momentum"],
            nesterov=c["nesterov"],
            rms_rate=0.2,
        )
    elif opt == "schedule_free_adamw":  # the weights are y, as optax's params
        o = keras.optimizers.ScheduleFreeAdamW(
            c["lr"], beta_1=c["b1"], beta_2=c["b2"], epsilon=c["eps"], warmup_steps=c["warmup_steps"]
        )
    else:
        raise ValueError(f"keras has no {opt}: {NOT_IN[opt]['keras']}")
    try:
        model.compile(optimizer=o, loss="mse")
        model.fit(prob["x"], prob["y"], batch_size=prob["batch"], epochs=1, shuffle=False, verbose=0)
        w1, b1, w2, b2 = (np.asarray(w) for w in model.get_weights())
        return [w1.T.copy(), b1, w2.T.copy(), b2]
    finally:
        if address is not None:
            o.close()


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"the keras runs use the JAX backend; KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}")
    return keras


RUNNERS = {"torch": run_torch, "optax": run_optax, "keras": run_keras}

TORCH_NEEDS = {"adafactor": "2.5", "muon": "2.9"}
TORCH2_VERSION = [None]  # the subprocess's torch, for the report


def torch2_python():
    """The torch 2.x venv's python (`make torch2`; TORCH2_PY overrides)."""
    env = os.environ.get("TORCH2_PY")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".venv-torch2" / "bin" / "python"


def torch2_runs(prob, jobs):
    """The torch runs [(opt, config), ...] made by the torch 2.x venv's python in one
    subprocess (mur_lab/torch2_runs.py: the same run_torch, problem and configs), through
    a temporary directory that is removed afterwards: (their final params, its torch
    version). RuntimeError saying why when it cannot."""
    import subprocess
    import tempfile

    py = torch2_python()
    if not py.exists():
        raise RuntimeError(f"no torch 2.x venv ({py} is missing: make torch2 builds it)")
    root = Path(__file__).resolve().parents[2]  # python-runner
    with tempfile.TemporaryDirectory(prefix="mur-torch2-") as d:
        np.savez(
            Path(d) / "problem.npz",
            *prob["params"],
            x=prob["x"],
            y=prob["y"],
            batch=prob["batch"],
            steps=prob["steps"],
        )
        (Path(d) / "jobs.json").write_text(json.dumps([{"opt": o, "config": c} for o, c in jobs]))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "lab")])}
        r = subprocess.run(
            [str(py), "-m", "mur_lab.torch2_runs", d], env=env, capture_output=True, text=True, timeout=900
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise RuntimeError(f"{py} failed: {last}")
        meta = json.loads((Path(d) / "meta.json").read_text())
        outs = []
        for i in range(len(jobs)):
            with np.load(Path(d) / f"run{i}.npz") as z:
                outs.append([z[f"arr_{k}"].copy() for k in range(4)])
    return outs, meta["torch"]


def _torch_in_process(opt):
    import torch

    return opt not in TORCH_CLASSES or hasattr(torch.optim, TORCH_CLASSES[opt])


def available(framework):
    """None when the framework can run here, else why not."""
    try:
        if framework == "torch":
            import torch  # noqa: F401
        elif framework == "optax":
            import jax  # noqa: F401
            import optax  # noqa: F401
        else:
            _keras()
    except Exception as e:  # ImportError, or keras on another backend
        return f"{type(e).__name__}: {e}"
    return None


def rel_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b)) / max(float(np.abs(x).max()) for x in a)


# -- the matrix ----------------------------------------------------------------------------------
def matrix(frameworks, optimizers, steps, address):
    """{opt: {"runs": [...], "rel": {(a, b): r}, "rel_ablated": {...} or None, "ablation": "eps=0" | ...}}"""
    prob = problem(steps)
    UNAVAILABLE.clear()
    variants = {
        opt: [("rel", CONFIGS[opt])] + ([("rel_ablated", ablated(opt, CONFIGS[opt]))] if ablation(opt) else [])
        for opt in optimizers
    }
    # torch's runs of the optimizers this torch lacks: one subprocess of the torch 2.x venv for all.
    sub = [o for o in optimizers if "torch" in frameworks and not _torch_in_process(o)]
    torch2 = {}
    if sub:
        import torch

        jobs = [(o, v, c) for o in sub for v, c in variants[o]]
        try:
            outs, version = torch2_runs(prob, [(o, c) for o, _, c in jobs])
            torch2 = {(o, v): r for (o, v, _), r in zip(jobs, outs)}
            TORCH2_VERSION[0] = version
        except (RuntimeError, OSError, ValueError) as e:
            for o in sub:
                UNAVAILABLE.setdefault(o, {})["torch"] = (
                    f"torch.optim.{TORCH_CLASSES[o]} needs torch >= {TORCH_NEEDS[o]}, this one is "
                    f"{torch.__version__}; the torch 2.x subprocess: {e}"
                )
    out = {}
    for opt in optimizers:
        entry = {"ablation": ablation(opt)}
        for variant, c in (("rel", CONFIGS[opt]), ("rel_ablated", ablated(opt, CONFIGS[opt]))):
            if variant == "rel_ablated" and entry["ablation"] is None:
                entry[variant] = None
                continue
            results = {}
            for f in frameworks:
                if has(f, opt):
                    results[f] = (
                        torch2[(opt, variant)] if (f, opt) in {("torch", o) for o in sub} else RUNNERS[f](prob, opt, c)
                    )
                results[f"mur~{f}"] = RUNNERS[f](prob, opt, c, address=address)
                if bridges(f, opt):  # mur with F's semantics, through F's client
                    results[f"mur+{f}"] = RUNNERS[f](prob, opt, c, address=address, bridge=f)
            runs = list(results)
            entry["runs"] = runs
            entry[variant] = {(a, b): rel_diff(results[a], results[b]) for a in runs for b in runs}
        out[opt] = entry
    return out


def verdicts(m):
    """Per optimizer and pair (a < b): the named differences, the gaps, and
    whether the pair passes (rows for the table)."""
    rows = []
    for opt, e in m.items():
        runs = e["runs"]
        for i, a in enumerate(runs):
            for b in runs[i + 1 :]:
                names = differences(a, b, opt)
                gap = e["rel"][(a, b)]
                gap0 = e["rel_ablated"][(a, b)] if e["rel_ablated"] else None
                at = e["ablation"]
                if not names:
                    ok, why = gap <= TOLERANCE, "same semantics"
                    if gap0 is not None:
                        ok = ok and gap0 <= TOLERANCE
                elif gap <= TOLERANCE:
                    # A difference the table names must show: else the table is wrong.
                    ok, why = False, "NOT MEASURED: the named difference makes no gap"
                elif gap0 is None:
                    ok, why = True, "differs (nothing to ablate)"
                else:
                    ok = gap0 <= TOLERANCE
                    why = f"explained: the gap closes at {at}" if ok else f"UNEXPLAINED: the gap stays at {at}"
                over = bridged(a, b, opt)
                if over:  # the difference stays named: which flags made this pair's semantics what they are
                    why += "; mur+ bridges " + ", ".join(
                        f"{n} ({', '.join(f'{k}={v}' for k, v in DIFFERENCES[n]['bridge'].items())})" for n in over
                    )
                rows.append(
                    dict(
                        optimizer=opt,
                        a=a,
                        b=b,
                        differences=names,
                        bridged=over,
                        rel=gap,
                        rel_ablated=gap0,
                        ablation=at,
                        ok=ok,
                        why=why,
                    )
                )
    return rows


def markdown(m, rows, steps, frameworks):
    lines = [
        f"# Cross-framework matrix ({', '.join(frameworks)}; {steps} steps)",
        "",
        "Max relative parameter difference max|a-b|/max|a| after the last step; `mur~F` is mur's additive rule "
        "through F's client, configured as F's optimizer with mur's defaults (torch's semantics); `mur+F` the "
        "same with the flags that bridge F's differences (F's semantics). Tolerance for runs with the same "
        f"semantics: {TOLERANCE:g}.",
        "",
        "## Runs",
        "",
        "n/a: the framework has no such optimizer (no run, no pair with it); mur~F still runs through F's client.",
        "",
        "| optimizer | " + " | ".join(frameworks) + " |",
        "|---" * (len(frameworks) + 1) + "|",
    ]
    for opt in m:
        lines.append(
            f"| {opt} | "
            + " | ".join(
                f"n/a ({why_not(f, opt)})"
                if not has(f, opt)
                else f"run (torch {TORCH2_VERSION[0]}, a subprocess)"
                if f == "torch" and opt in TORCH_CLASSES and TORCH2_VERSION[0]
                else "run"
                for f in frameworks
            )
            + " |"
        )
    lines.append("")
    for opt, e in m.items():
        runs = e["runs"]
        lines += [
            f"## {opt}: {', '.join(f'{k}={v}' for k, v in CONFIGS[opt].items())}",
            "",
            "| | " + " | ".join(runs) + " |",
            "|---" * (len(runs) + 1) + "|",
        ]
        for a in runs:
            lines.append(f"| {a} | " + " | ".join("" if a == b else f"{e['rel'][(a, b)]:.1e}" for b in runs) + " |")
        lines.append("")
    lines += [
        "## Pairs",
        "",
        "| optimizer | pair | differences | rel | rel ablated | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        g0 = "" if r["rel_ablated"] is None else f"{r['rel_ablated']:.1e} ({r['ablation']})"
        lines.append(
            f"| {r['optimizer']} | {r['a']} vs {r['b']} | {', '.join(r['differences']) or '-'} | "
            f"{r['rel']:.1e} | {g0} | {'ok' if r['ok'] else 'FAIL'}: {r['why']} |"
        )
    lines += ["", "## Semantic differences", ""]
    for n, d in DIFFERENCES.items():
        flags = ", ".join(f"{k}={v}" for k, v in d["bridge"].items())
        how = f"`{flags}` reproduces it (runs mur+F)" if flags else "no flag reproduces it (no mur+F run)"
        lines += [
            f"- **{n}** ({', '.join(f'{f} {o}' for f, o in sorted(d['where']))}): {d['formula']}. "
            f"mur: {how}; gone at {d['ablation']}."
        ]
    lines += ["", "Defaults that differ (the matrix sets them equal):", ""]
    lines += [f"- {what}: {vals}; mur: `{how}`" for what, vals, how in DEFAULT_DIFFERENCES]
    return "\n".join(lines) + "\n"


def heatmap(m, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = list(m)
    fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 4.4), squeeze=False)
    fig.subplots_adjust(wspace=0.55)
    for ax, opt in zip(axes[0], opts):
        runs = m[opt]["runs"]
        z = np.array([[np.log10(max(m[opt]["rel"][(a, b)], 1e-9)) if a != b else np.nan for b in runs] for a in runs])
        im = ax.imshow(z, vmin=-9, vmax=-1, cmap="viridis")
        ax.set_xticks(range(len(runs)), runs, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(runs)), runs, fontsize=7)
        ax.set_title(opt, fontsize=9)
        for i in range(len(runs)):
            for j in range(len(runs)):
                if i != j:  # log10 of the difference; "0": bit for bit equal
                    r = m[opt]["rel"][(runs[i], runs[j])]
                    ax.text(
                        j,
                        i,
                        f"{z[i, j]:.0f}" if r > 0 else "0",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if z[i, j] < -5 else "black",
                    )
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="log10 max relative parameter difference")
    fig.suptitle(
        f"mur~F: mur's additive rule through F's client, configured as F's optimizer; mur+F: with the "
        f"flags bridging F's semantics (agreement: <= {TOLERANCE:g}, i.e. {np.log10(TOLERANCE):.1f})",
        fontsize=9,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m mur.validate --frameworks",
        description="Cross-framework matrix: each framework's optimizer and mur's additive "
        "rule configured to match it, trained the same way.",
    )
    ap.add_argument("--frameworks", required=True, help="comma-separated: torch, optax, keras")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="10 steps")
    ap.add_argument("--out", default="results/frameworks", help="directory for frameworks.md, .png and .json")
    ap.add_argument("--server", default=None, help="a running mur server (default: start one)")
    a = ap.parse_args(argv)
    frameworks = [f for f in a.frameworks.split(",") if f]
    optimizers = [o for o in a.optimizers.split(",") if o]
    for f in frameworks:
        if f not in FRAMEWORKS:
            ap.error(f"--frameworks: {f!r} is not one of {', '.join(FRAMEWORKS)}")
    for o in optimizers:
        if o not in OPTIMIZERS:
            ap.error(f"--optimizers: {o!r} is not one of {', '.join(OPTIMIZERS)}")
    if a.steps < 1:
        ap.error(f"--steps: {a.steps} must be >= 1")
    if len(set(frameworks)) != len(frameworks) or not frameworks:
        ap.error(f"--frameworks: {a.frameworks!r} must name each framework once")
    for f in frameworks:
        why = available(f)
        if why:
            ap.error(
                f"--frameworks: {f} is not available here ({why}); `make jax` builds .venv-jax with jax, optax "
                "and keras"
            )
    steps = 10 if a.quick else a.steps
    import torch

    import mur

    torch.set_num_threads(1)
    start = time.time()
    if a.server:
        m = matrix(frameworks, optimizers, steps, a.server)
    else:
        with mur.LocalServer() as server:
            m = matrix(frameworks, optimizers, steps, server.address)
    rows = verdicts(m)
    md = markdown(m, rows, steps, frameworks)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frameworks.md").write_text(md)
    heatmap(m, out / "frameworks.png")
    with open(out / "frameworks.json", "w") as f:
        json.dump(
            {
                "steps": steps,
                "tolerance": TOLERANCE,
                "configs": {o: CONFIGS[o] for o in optimizers},
                "matrix": {
                    o: {
                        "runs": e["runs"],
                        "rel": {f"{x}|{y}": v for (x, y), v in e["rel"].items()},
                        "ablation": e["ablation"],
                        "rel_ablated": None
                        if e["rel_ablated"] is None
                        else {f"{x}|{y}": v for (x, y), v in e["rel_ablated"].items()},
                    }
                    for o, e in m.items()
                },
                "pairs": rows,
            },
            f,
            indent=1,
        )
    failed = [r for r in rows if not r["ok"]]
    print(
        f"frameworks: {len(rows) - len(failed)} pairs ok, {len(failed)} failed, {time.time() - start:.0f} s; "
        f"wrote {out}/frameworks.md, .png, .json"
    )
    for r in failed:
        print(f"FAIL {r['optimizer']} {r['a']} vs {r['b']}: rel {r['rel']:.2e}; {r['why']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
