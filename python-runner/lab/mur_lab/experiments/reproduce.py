"""python -m mur_lab.experiments.reproduce [--quick] [--out results] [--replot]

The paper reproduction (issue 11): for every task x optimizer x rule, the
same Optuna budget over the rule's search space (spaces.py), selected on a
validation split; the best configuration retrained with several seeds and
scored on the test set; a learning-rate sweep around it; the paper's claims
judged cell by cell (claims.py). Every step is computed by one local mur
server (the default engine, shared-memory transport) through
mur.RemoteOptimizer. Writes results.json, PNG plots and REPORT.md.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import mur
from mur_lab.experiments import images, spaces, toy, tuning

SEED = 1234

IMG = ["sgd+momentum", "adagrad", "adam", "rmsprop"]
# Sized for the 2 shared cores of the project machine: a first run at a quarter
# of this budget took 6.6 min, this one 21.3 min (the issue allows about 45-60);
# the images are subsets of the 60k training images.
FULL = {
    "convex": dict(kind="toy", optimizers=toy.OPTIMIZERS, trials=80, random=40, seeds=[0, 1, 2], sweep=True),
    "rosenbrock": dict(kind="toy", optimizers=toy.OPTIMIZERS, trials=80, random=40, seeds=[0, 1, 2], sweep=True),
    "mlp": dict(
        kind="image",
        model="mlp",
        optimizers=IMG,
        train=20000,
        val=5000,
        test=10000,
        curve=2000,
        trial_epochs=2,
        epochs=6,
        trials=24,
        random=12,
        seeds=[0, 1, 2],
        sweep=True,
        curve_per_epoch=4,
    ),
    "cnn": dict(
        kind="image",
        model="cnn",
        optimizers=IMG,
        train=8000,
        val=2000,
        test=10000,
        curve=2000,
        trial_epochs=1,
        epochs=4,
        trials=12,
        random=6,
        seeds=[0, 1, 2],
        sweep=True,
        curve_per_epoch=2,
    ),
    "resnet": dict(
        kind="image",
        model="resnet",
        optimizers=["sgd+momentum", "adam"],
        train=8000,
        val=2000,
        test=10000,
        curve=2000,
        trial_epochs=2,
        epochs=5,
        trials=12,
        random=6,
        seeds=[0, 1, 2],
        sweep=False,
        curve_per_epoch=2,
    ),
}
QUICK = {
    "convex": dict(kind="toy", optimizers=["sgd", "adam"], trials=6, random=3, seeds=[0], sweep=True),
    "rosenbrock": dict(kind="toy", optimizers=["sgd+momentum", "adam"], trials=6, random=3, seeds=[0], sweep=True),
    "mlp": dict(
        kind="image",
        model="mlp",
        optimizers=["sgd+momentum", "adam"],
        train=2000,
        val=500,
        test=2000,
        curve=500,
        trial_epochs=1,
        epochs=2,
        trials=4,
        random=2,
        seeds=[0, 1],
        sweep=True,
        curve_per_epoch=2,
    ),
}


def log(msg):
    print(time.strftime("[%H:%M:%S]"), msg, flush=True)


def versions(backend):
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import optuna

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "node": node,
        "mur": mur.__version__,
        "optuna": optuna.__version__,
        "server_backend": backend,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "machine": platform.machine(),
    }


# ---------------------------------------------------------------- one cell
def _guard(cell, fn):
    """fn(), or None when the server failed the run with an error: the error
    is recorded in cell["errors"] (and reported), the run left out."""
    try:
        return fn()
    except mur.MurError as e:
        cell.setdefault("errors", []).append(str(e))
        log(f"server error (run left out): {e}")
        return None


def toy_cell(problem, cfg, optimizer, rule, address, seed):
    def objective(c):
        return toy.score(problem, toy.run(problem, optimizer, rule, c, address))

    cell = {"tuning": tuning.tune(objective, rule, toy.LR_RANGE, cfg["trials"], cfg["random"], seed)}
    best = cell["tuning"]["best"]
    cell["final"], cell["sweep"] = [], {}
    if best is None:
        return cell
    for s in cfg["seeds"]:  # only the random gamma schedule depends on the seed
        path = _guard(cell, lambda s=s: toy.run(problem, optimizer, rule, best, address, seed=s))
        if path is None:
            continue
        cell["final"].append(
            {
                "seed": s,
                "path": path,
                "distance": toy.distance(problem, path[-1]),
                "iterations": toy.iterations_to_target(problem, path),
            }
        )
    if cfg["sweep"]:
        for f in spaces.FACTORS:
            path = _guard(cell, lambda f=f: toy.run(problem, optimizer, rule, spaces.scaled(best, f), address))
            if path is not None:
                r = toy.relative(problem, path)
                cell["sweep"][f"{f:g}"] = None if math.isinf(r) else r
    return cell


def image_cell(task, cfg, data, optimizer, rule, address, seed):
    m = cfg["model"]

    def objective(c):
        return images.train(m, optimizer, rule, c, 0, data, cfg["trial_epochs"], address)["final"]

    cell = {"tuning": tuning.tune(objective, rule, images.LR_RANGE, cfg["trials"], cfg["random"], seed)}
    best = cell["tuning"]["best"]
    cell["final"], cell["sweep"] = [], {}
    if best is None:
        return cell
    for s in cfg["seeds"]:
        r = _guard(
            cell,
            lambda s=s: images.train(
                m,
                optimizer,
                rule,
                best,
                s,
                data,
                cfg["epochs"],
                address,
                curve_per_epoch=cfg["curve_per_epoch"],
                final_on="test",
            ),
        )
        if r is None:
            continue
        r["seed"] = s
        cell["final"].append(r)
    if cfg["sweep"]:
        for f in spaces.FACTORS:
            r = _guard(
                cell,
                lambda f=f: images.train(
                    m, optimizer, rule, spaces.scaled(best, f), 0, data, cfg["trial_epochs"], address
                ),
            )
            if r is not None:
                cell["sweep"][f"{f:g}"] = r["final"]
    return cell


def run_task(task, cfg, address):
    start = time.time()
    data = None
    if cfg["kind"] == "image":
        data = images.Data(cfg["train"], cfg["val"], cfg["test"], cfg["curve"])
    cells = {}
    for i, o in enumerate(cfg["optimizers"]):
        for r in spaces.RULES:
            # the same Optuna seed for every rule of an optimizer: equal luck in the random phase
            seed = SEED + 10 * i
            if cfg["kind"] == "toy":
                c = toy_cell(task, cfg, o, r, address, seed)
            else:
                c = image_cell(task, cfg, data, o, r, address, seed)
            cells[f"{o}/{r}"] = c
            t = c["tuning"]
            log(
                f"{task} {o}/{r}: {len(t['trials'])} trials in {t['seconds']:.1f} s, best score "
                f"{t['best_score'] if t['best_score'] is None else round(t['best_score'], 4)}; "
                f"{time.time() - start:.0f} s into the task"
            )
    return {"cells": cells, "seconds": time.time() - start, "steps_per_epoch": data.steps_per_epoch() if data else None}


def run(cfgs, out, quick):
    torch.set_num_threads(1)
    start = time.time()
    with mur.LocalServer() as server:
        res = {"versions": versions(server.backend), "config": cfgs, "quick": quick, "tasks": {}}
        for task, cfg in cfgs.items():
            res["tasks"][task] = run_task(task, cfg, server.address)
            log(f"{task} done in {res['tasks'][task]['seconds']:.0f} s")
    res["wall_seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description="Reproduce the paper's experiments through the mur server.")
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute); asserts robust findings")
    ap.add_argument("--out", default=None, help="output directory (default results/, or results/quick with --quick)")
    ap.add_argument("--replot", action="store_true", help="redo plots and report from an existing results.json")
    a = ap.parse_args(argv)
    from mur_lab.experiments import plots, report  # matplotlib only when needed

    root = Path(__file__).resolve().parents[4]
    out = Path(a.out) if a.out else root / "results" / ("quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    if a.replot:
        res = json.loads((out / "results.json").read_text())
    else:
        res = run(QUICK if a.quick else FULL, out, a.quick)
    analysis = report.analyse(res)
    files = plots.all_plots(res, analysis, out)
    text = report.write(res, analysis, files, out)
    log(f"wrote {out / 'REPORT.md'}, results.json and {len(files)} plots; wall {res['wall_seconds'] / 60:.1f} min")
    if a.quick:
        return check_quick(res, analysis, text)
    problems = report.prose_problems(text)
    for p in problems:
        print("report prose:", p)
    return 1 if problems else 0


def check_quick(res, analysis, text):
    """What --quick asserts: only what holds with margin at the quick size."""
    from mur_lab.experiments import report

    failures = []
    # 1. The tuned additive and hybrid MLPs learn through the server (chance is
    #    10 %; the quick run's lowest seed was 65 %).
    for k, c in res["tasks"]["mlp"]["cells"].items():
        if k.endswith(("/additive", "/hybrid")):
            accs = [r["final"] for r in c["final"]]
            if not accs or any(a is None or a < 0.5 for a in accs):
                failures.append(f"[1] mlp {k}: test accuracies {accs}, not all >= 0.5")
    # 2. The tuned additive rule gets the convex quadratic within the target.
    for k, c in res["tasks"]["convex"]["cells"].items():
        if k.endswith("/additive"):
            d = [f["distance"] for f in c["final"]]
            if not d or not all(x <= toy.TARGET * toy.start_distance("convex") for x in d):
                failures.append(f"[2] convex {k}: final distances {d} not within the target")
    # 3. Every tuning ran its full budget, diverged trials are counted, never scored.
    for task, t in res["tasks"].items():
        for k, c in t["cells"].items():
            trials = c["tuning"]["trials"]
            if len(trials) != res["config"][task]["trials"]:
                failures.append(f"[3] {task} {k}: {len(trials)} trials, budget {res['config'][task]['trials']}")
            if any(tr["score"] is not None and not math.isfinite(tr["score"]) for tr in trials):
                failures.append(f"[3] {task} {k}: a non-finite score was recorded")
    # 4. The report has the verdict table, every claim a verdict, and no garbled prose.
    for p in report.prose_problems(text):
        failures.append(f"[4] report: {p}")
    for msg in failures:
        print("reproduce --quick: FAILED:", msg)
    failed = len({m[:3] for m in failures})
    print(f"reproduce: {CHECKS - failed} passed, {failed} failed")
    return 1 if failures else 0


CHECKS = 4


if __name__ == "__main__":
    sys.exit(main())
