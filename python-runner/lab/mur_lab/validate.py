"""python -m mur.validate: the same training three ways, compared step by step.

For every optimizer x rule, an MLP and a small CNN are trained on the same
Fashion-MNIST batches from the same initial weights with
  1. torch.optim (additive rule only: that is what torch.optim computes),
  2. mur.reference (in-process torch, the maths of docs/update-rules.md),
  3. mur.RemoteOptimizer (the server),
each fed the same gradients (those of the reference model at its own
parameters, so the trajectory is a real training run), and after each step
the parameters are compared. Exits 1 when a difference exceeds the tolerance
below.
"""

import argparse
import contextlib
import json
import sys
import time

import torch
from torch import nn

import mur
from mur import reference
from mur_lab import models
from mur_lab.data import load

OPTIMIZERS = [
    "sgd",
    "adam",
    "adamw",
    "adagrad",
    "rmsprop",
    "adamax",
    "nadam",
    "radam",
    "adadelta",
    "lion",
    "rprop",
    "asgd",
    "lamb",
    "lars",
    "adafactor",
    "muon",
    "sparseadam",
    "schedule_free_adamw",
]
RULES = ["additive", "multiplicative", "hybrid", "exp_sign"]
HYPERS = {
    "sgd": dict(lr=0.05, momentum=0.9),
    "lamb": dict(lr=0.01),
    "lars": dict(lr=0.1),
    "schedule_free_adamw": dict(lr=0.01),
}
RULE_HYPERS = {"hybrid": dict(gamma=0.5)}
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
if hasattr(torch.optim, "Adafactor"):  # torch >= 2.5
    TORCH["adafactor"] = torch.optim.Adafactor
if hasattr(torch.optim, "Muon"):  # torch >= 2.9
    TORCH["muon"] = torch.optim.Muon
TORCH["sparseadam"] = torch.optim.SparseAdam

# Optimizers that take some parameters only (Muon: matrices; SparseAdam: the
# sparse embedding table) run in the recipe users run them in: one mur session
# whose second group names an optimizer of its own (the rest: AdamW / Adam),
# beside the same pair of torch optimizers and of references. By optimizer:
# (which parameters it takes, the rest's optimizer and hyperparameters, models).
RECIPES = {
    "muon": (lambda p: p.ndim == 2, "adamw", dict(lr=3e-3), ("mlp", "cnn")),
    "sparseadam": (lambda p: p.is_sparse_table, "adam", dict(lr=1e-3), ("bag",)),
}
HYPERS["muon"] = dict(lr=0.02)


@contextlib.contextmanager
def muon_newton_schulz_in_float32():
    """torch.optim.Muon runs its Newton-Schulz iteration in bfloat16 (8 bits of
    mantissa: 4e-3 relative a product), mur and mur.reference in float32; the
    comparison with torch is of the maths, so torch's is run in float32 too
    (its own code, with its bfloat16 standing for float32)."""
    try:
        from torch.optim import _muon
    except ImportError:  # torch < 2.9: no torch side to compare
        yield
        return

    class TorchWithF32:
        bfloat16 = torch.float32

        def __getattr__(self, name):
            return getattr(torch, name)

    saved = _muon.torch
    _muon.torch = TorchWithF32()
    try:
        yield
    finally:
        _muon.torch = saved


# Tolerance on the relative difference max|a - b| / max|a| after step k.
# All three run in float32 (u = 6e-8) on identical gradients, so they differ
# only by the rounding of ~10 elementwise ops a step, done in different orders
# by different kernels: ~1e-7 relative a step, growing at most linearly with k.
# Adaptive directions divide by sqrt(v) (RMSprop's first direction is
# g / (sqrt(1 - alpha) |g|) = +-10 for any |g| >> eps), which can amplify a
# rounding difference of v several times. Measured worst over 50 steps, MLP
# and CNN, every optimizer x rule: 1.7e-6 (adam x exp_sign, MLP, step 50).
# 5e-6 + 1e-6 k stays above that at every step; a wrong formula differs by
# 1e-3 or more (torch 1.13's NAdam quirk: 7e-2 after 10 steps). Muon's five
# Newton-Schulz products (sums in a different order in OpenBLAS, torch and
# the reference) stay within it too: 1.4e-6 worst (MLP, additive, 50 steps).
def tolerance(k):
    return 5e-6 + 1e-6 * k


# Known differences between an installed torch.optim and the maths mur follows.
def torch_quirk(opt_name):
    if opt_name == "nadam" and int(torch.__version__.split(".")[0]) < 2:
        return "torch<2 NAdam multiplies mu_t twice into mu_product_next (fixed in torch 2.0)"
    return None


MODELS = {"mlp": lambda: models.mlp(64), "cnn": lambda: models.cnn(8, 16), "bag": lambda: models.bag(32)}


def rel_diff(a, b):
    num = max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))
    den = max(x.abs().max().item() for x in a.parameters())
    return num, num / den


def split(net, opt_name):
    """The parameter groups of `net` for `opt_name`: [(optimizer, params, hyperparameters)]."""
    if opt_name not in RECIPES:
        return [(opt_name, list(net.parameters()), {})]
    takes, other, other_h, _ = RECIPES[opt_name]
    for p in net.parameters():
        p.is_sparse_table = isinstance(net, models.PixelBag) and p is net.table.weight
    own = [p for p in net.parameters() if takes(p)]
    rest = [p for p in net.parameters() if not takes(p)]
    return [(opt_name, own, {})] + ([(other, rest, other_h)] if rest else [])


def run(model_name, opt_name, rule, steps, batches, address):
    torch.manual_seed(0)
    base = MODELS[model_name]()
    h = {**HYPERS.get(opt_name, {}), **RULE_HYPERS.get(rule, {})}
    nets, opts = {}, {}
    with_torch = rule == "additive" and opt_name in TORCH and not torch_quirk(opt_name)
    for who in (["torch"] if with_torch else []) + ["reference", "mur"]:
        net = MODELS[model_name]()
        net.load_state_dict(base.state_dict())
        nets[who] = net
        groups = split(net, opt_name)
        if who == "torch":
            opts[who] = [TORCH[o](ps, **{**h, **gh}) for o, ps, gh in groups]
        elif who == "reference":
            opts[who] = [reference.Optimizer(ps, optimizer=o, rule=rule, **{**h, **gh}) for o, ps, gh in groups]
        else:
            # One session: the first group is the optimizer's own, a second one names its optimizer.
            param_groups = [{"params": ps, **({"optimizer": o, **gh} if o != opt_name else {})} for o, ps, gh in groups]
            opts[who] = [mur.RemoteOptimizer(param_groups, optimizer=opt_name, rule=rule, server=address, **h)]
    loss_fn = nn.CrossEntropyLoss()
    worst = {}
    try:
        for k in range(1, steps + 1):
            x, y = batches[(k - 1) % len(batches)]
            # One real gradient per step (the reference model's), fed to all
            # three: what differs is then only the optimizers' arithmetic, not
            # the chaos of training (max-pool ties, ReLU boundaries).
            ref = nets["reference"]
            for o in opts["reference"]:
                o.zero_grad()
            loss_fn(ref(x), y).backward()
            for who, net in nets.items():
                if who != "reference":
                    for p, q in zip(net.parameters(), ref.parameters()):
                        p.grad = q.grad.clone()
            for group in opts.values():
                for opt in group:
                    opt.step()
            for a, b in (("mur", "reference"), ("mur", "torch"), ("reference", "torch")):
                if a in nets and b in nets:
                    ab, rel = rel_diff(nets[b], nets[a])
                    w = worst.setdefault(f"{a}-{b}", {"max_abs": 0.0, "max_rel": 0.0, "ok": True, "per_step": []})
                    w["per_step"].append(rel)
                    w["max_abs"] = max(w["max_abs"], ab)
                    w["max_rel"] = max(w["max_rel"], rel)
                    w["ok"] = w["ok"] and rel <= tolerance(k)
    finally:
        opts["mur"][0].close()
    return worst


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(x == "--frameworks" or x.startswith("--frameworks=") for x in argv):
        from mur_lab.frameworks import main as frameworks_main  # torch/optax/keras matrix: its own options

        return frameworks_main(argv)
    ap = argparse.ArgumentParser(description="Cross-framework validation: torch.optim vs mur.reference vs mur server.")
    ap.add_argument(
        "--frameworks",
        metavar="torch,optax,keras",
        help="instead: the cross-framework matrix (mur_lab.frameworks; --frameworks ... --help)",
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="10 steps, MLP only")
    ap.add_argument("--models", default="mlp,cnn,bag", help="bag: a sparse EmbeddingBag model, SparseAdam's only")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--json", help="write every number here")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.models = 10, "mlp,bag"
    torch.set_num_threads(1)
    x, y = load("train")
    batches = [(torch.from_numpy(x[i : i + 64]), torch.from_numpy(y[i : i + 64])) for i in range(0, 64 * 10, 64)]
    start = time.time()
    rows, failed = [], 0
    with mur.LocalServer() as server:
        print(f"server backend: {server.backend}; {a.steps} steps; tolerance rel <= 5e-6 + 1e-6 k")
        for o in a.optimizers.split(","):
            if torch_quirk(o):
                print(f"not compared with torch {torch.__version__}: {o}: {torch_quirk(o)}")
        print(
            f"{'model':5} {'optimizer':9} {'rule':14} {'pair':17} {'max abs':>10} {'max rel':>10} {'final rel':>10}  ok"
        )
        for m in a.models.split(","):
            for o in a.optimizers.split(","):
                if m not in (RECIPES[o][3] if o in RECIPES else ("mlp", "cnn")):
                    continue
                for r in a.rules.split(","):
                    with muon_newton_schulz_in_float32():
                        res = run(m, o, r, a.steps, batches, server.address)
                    for pair, w in res.items():
                        rows.append({"model": m, "optimizer": o, "rule": r, "pair": pair, **w})
                        failed += not w["ok"]
                        print(
                            f"{m:5} {o:9} {r:14} {pair:17} {w['max_abs']:10.2e} {w['max_rel']:10.2e} "
                            f"{w['per_step'][-1]:10.2e}  {'ok' if w['ok'] else 'FAIL'}",
                            flush=True,
                        )
    print(f"{len(rows)} comparisons, {failed} over tolerance, {time.time() - start:.0f} s")
    print(f"validate: {len(rows) - failed} passed, {failed} failed")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"steps": a.steps, "rows": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
