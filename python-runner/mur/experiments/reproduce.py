"""python -m mur.experiments.reproduce [--quick] [--out results]

Runs every experiment of the paper reproduction through one local mur server
(RemoteOptimizer), writes the raw results as JSON, PNG plots and REPORT.md.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import mur  # noqa: E402
from mur.experiments import images, toy  # noqa: E402

SEED = 1234
FULL = dict(robust_n=100, grid_quick=False, models={"mlp": (60000, 5), "cnn": (20000, 4)}, test_size=10000,
            seeds=[0, 1, 2], sens_lrs={"adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                                       "sgd": [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]},
            sens=(20000, 3), target={"mlp": 0.85, "cnn": 0.87})
QUICK = dict(robust_n=5, grid_quick=True, models={"mlp": (5000, 2)}, test_size=2000, seeds=[0],
             sens_lrs={"adam": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1], "sgd": [1e-3, 1e-2, 0.1, 0.3, 1.0]},
             sens=(3000, 1), target={"mlp": 0.75})

PAPER = {  # the paper (Kirtas et al. 2024), toy problems: distance after 100 iterations, best configuration
    "convex": {"sgd": (8.61e-1, 2.92e-5, 3.57e-7), "adagrad": (5.80e-4, 1.35e-4, 1.68e-7),
               "adam": (3.75e-2, 7.44e-3, 4.47e-3), "rmsprop": (1.82e-5, 7.58e-6, 1.68e-7)},
    "rosenbrock": {"sgd": (1.38, 7.70e-2, 2.04e-2), "adagrad": (4.60e-1, 1.88e-1, 1.26e-2),
                   "adam": (8.24e-1, 7.84e-2, 5.73e-2), "rmsprop": (4.58e-1, 1.85e-1, 5.06e-2)},
}


def versions(backend):
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"python": platform.python_version(), "torch": torch.__version__, "node": node, "mur": mur.__version__,
            "server_backend": backend, "cpus": os.cpu_count(), "memory_gib": round(mem, 1), "machine": platform.machine()}


def run_toy(cfg, address):
    out = {"best": {}, "robust": {}}
    jobs = [(p, o, r) for p in toy.PROBLEMS for o in toy.OPTIMIZERS for r in toy.RULES]
    for p, o, r in tqdm(jobs, disable=not sys.stderr.isatty(), desc="toy: best configuration"):
        out["best"][f"{p}/{o}/{r}"] = toy.best_configuration(p, o, r, address, cfg["grid_quick"])
    for i, (p, o, r) in enumerate(tqdm(jobs, disable=not sys.stderr.isatty(), desc=f"toy: robustness ({cfg['robust_n']} configs each)")):
        out["robust"][f"{p}/{o}/{r}"] = toy.robustness(p, o, r, address, cfg["robust_n"], SEED + i)
    return out


def run_images(cfg, address):
    out = {}
    for model, (n_train, epochs) in cfg["models"].items():
        data = images.Data(n_train, cfg["test_size"])
        steps = math.ceil(n_train / 128) * epochs
        jobs = [(o, r, s) for o in images.LRS for r in toy.RULES for s in cfg["seeds"]]
        with tqdm(total=len(jobs) * steps, disable=not sys.stderr.isatty(), desc=f"fashion-mnist {model}", unit="step") as bar:
            for o, r, s in jobs:
                out[f"{model}/{o}/{r}/{s}"] = images.train(model, o, r, s, data, epochs, address, bar=bar)
    return out


def run_sensitivity(cfg, address):
    n_train, epochs = cfg["sens"]
    data = images.Data(n_train, cfg["test_size"])
    out = {}
    jobs = [(o, r, lr) for o, lrs in cfg["sens_lrs"].items() for r in toy.RULES for lr in lrs]
    with tqdm(total=len(jobs) * math.ceil(n_train / 128) * epochs, disable=not sys.stderr.isatty(), desc="sensitivity (mlp)", unit="step") as bar:
        for o, r, lr in jobs:
            # The sweep moves lr = lr_out together (no OUT_SCALE): it shows where each rule's optimum lies.
            out[f"{o}/{r}/{lr:g}"] = images.train("mlp", o, r, 0, data, epochs, address, lr=lr, bar=bar,
                                                  scale_out=False)["accuracy"][-1]
    return out


# ---------------------------------------------------------------- plots
def _save(fig, axes, out, name, ylabel):
    """Label, lay out, write and close one figure; returns its file name."""
    axes[0].set_ylabel(ylabel)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


def plot_toy(res, out):
    files = []
    for p, prob in toy.PROBLEMS.items():
        fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
        (lo_x, hi_x), (lo_y, hi_y) = prob["window"]  # fixed, so one wild first step does not hide the rest
        X, Y = np.meshgrid(np.linspace(lo_x, hi_x, 200), np.linspace(lo_y, hi_y, 200))
        Z = prob["f"](torch.tensor(np.stack([X, Y]))).numpy()
        for ax, o in zip(axes, toy.OPTIMIZERS):
            ax.contour(X, Y, np.log1p(Z), levels=25, cmap="Greys", linewidths=0.6)
            for r in toy.RULES:
                path = np.array([xy for xy in res["best"][f"{p}/{o}/{r}"]["path"] if all(map(math.isfinite, xy))])
                ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=1, label=r)
            ax.plot(*prob["minimum"], "r*", ms=12)
            ax.set_xlim(lo_x, hi_x)
            ax.set_ylim(lo_y, hi_y)
            ax.set_title(f"{p}: {o}")
        files.append(_save(fig, axes, out, f"toy_trajectories_{p}.png", "y"))
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        for ax, o in zip(axes, toy.OPTIMIZERS):
            for r in toy.RULES:
                d = [toy.distance(p, xy) for xy in res["best"][f"{p}/{o}/{r}"]["path"]]
                ax.semilogy([min(v, 1e6) for v in d], label=r)
            ax.set_title(f"{p}: {o}")
            ax.set_xlabel("iteration")
        files.append(_save(fig, axes, out, f"toy_distance_{p}.png", "distance to the minimum"))
    return files


def plot_images(res, out):
    files = []
    for model in sorted({k.split("/")[0] for k in res}):
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        for ax, o in zip(axes, images.LRS):
            for r in toy.RULES:
                runs = [v["accuracy"] for k, v in res.items() if k.startswith(f"{model}/{o}/{r}/")]
                mean = np.mean(np.array(runs), axis=0)
                ax.plot(range(1, len(mean) + 1), mean * 100, "o-", label=r)
            ax.set_title(f"{model}: {o}")
            ax.set_xlabel("epoch")
        files.append(_save(fig, axes, out, f"images_accuracy_{model}.png", "test accuracy (%)"))
    return files


def plot_sensitivity(res, lrs, out):
    fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4))
    axes = np.atleast_1d(axes)
    for ax, (o, grid) in zip(axes, lrs.items()):
        for r in toy.RULES:
            ax.semilogx(grid, [res[f"{o}/{r}/{lr:g}"] * 100 for lr in grid], "o-", label=r)
        ax.set_title(f"sensitivity: {o} (mlp)")
        ax.set_xlabel("learning rate (lr = lr_out)")
    return [_save(fig, axes, out, "sensitivity.png", "final test accuracy (%)")]


# ---------------------------------------------------------------- report
def grid_text(rule, quick):
    """Each hyperparameter's values in the grid actually searched."""
    g = toy.grid(rule, quick)
    return " x ".join(f"{k} in {sorted({h[k] for h in g})}" for k in g[0])


def fmt(v):
    return "diverged" if not math.isfinite(v) or v >= 1e6 else f"{v:.3g}"


def mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def findings(res, cfg):
    """Plain statements computed from the numbers (also the --quick assertions)."""
    best, robust = res["toy"]["best"], res["toy"]["robust"]
    f = {}
    for p in toy.PROBLEMS:
        f[f"{p}: hybrid best <= additive best"] = [o for o in toy.OPTIMIZERS
                                                    if best[f"{p}/{o}/hybrid"]["distance"] <= best[f"{p}/{o}/additive"]["distance"]]
        f[f"{p}: hybrid most robust (lowest mean)"] = [o for o in toy.OPTIMIZERS if robust[f"{p}/{o}/hybrid"]["mean"] <= min(
            robust[f"{p}/{o}/{r}"]["mean"] for r in toy.RULES)]
    return f


def report(res, cfg, files, out, quick, wall):
    v = res["versions"]
    L = [f"# mur: reproducing Kirtas, Passalis, Tefas (2024) through the service{' (quick run)' if quick else ''}", "",
         f"Generated by `python -m mur.experiments.reproduce{' --quick' if quick else ''}` "
         f"(`make reproduce`). Every optimizer step below was computed by a mur server "
         f"(backend `{v['server_backend']}`) through `mur.RemoteOptimizer`.", "",
         f"Machine: {v['cpus']} CPUs, {v['memory_gib']} GiB, {v['machine']}; Python {v['python']}, torch {v['torch']}, "
         f"Node {v['node']}, mur {v['mur']}. Wall time {wall / 60:.1f} min. Seeds: toy robustness {SEED}+i, "
         f"images {cfg['seeds']}.", "", "## 1. Toy problems (100 iterations)", ""]
    for p, prob in toy.PROBLEMS.items():
        start = prob["start"]
        L += [f"**{p}**: f = {prob['formula']}, start ({start[0]:.4g}, {start[1]:.4g}), minimum {prob['minimum']}, "
              f"start distance {toy.distance(p, start):.4g}.", ""]
    L += ["The convex function of the paper is not published; ours is an ill-conditioned quadratic "
          "(condition number 10) with its minimum away from the axes, started at the paper's distance 69.26 in the "
          "minimum's quadrant (a purely multiplicative rule never changes a weight's sign, so from across an axis it "
          "could not reach the minimum: a quick run from (-47.97, 50.97) stalled at x = 0, distance 1.0).", "",
          "Best configuration: the lowest final distance over a grid (SGD without momentum; "
          + "; ".join(f"{r}: {len(toy.grid(r, cfg['grid_quick']))} points of " + grid_text(r, cfg["grid_quick"]) for r in toy.RULES)
          + ").", "",
          "| task | optimizer | additive (paper) | multiplicative (paper) | hybrid (paper) |", "|---|---|---|---|---|"]
    for p in toy.PROBLEMS:
        for o in toy.OPTIMIZERS:
            cells = [f"{fmt(res['toy']['best'][f'{p}/{o}/{r}']['distance'])} ({PAPER[p][o][i]:.3g})" for i, r in enumerate(toy.RULES)]
            L.append(f"| {p} | {o} | " + " | ".join(cells) + " |")
    L += ["", f"Robustness: {cfg['robust_n']} random configurations per pair (log-uniform lr in [1e-4, 1], lr_in in "
          "[0.1, 10], lr_out in [1e-3, 0.5], gamma uniform in [0.5, 1]; multiplicative uses lr = lr_out); final distance "
          "relative to the start distance, mean ± sd (median), diverged runs counted as 1e6.", "",
          "| task | optimizer | additive | multiplicative | hybrid |", "|---|---|---|---|---|"]
    for p in toy.PROBLEMS:
        for o in toy.OPTIMIZERS:
            cells = []
            for r in toy.RULES:
                s = res["toy"]["robust"][f"{p}/{o}/{r}"]
                cells.append(f"{s['mean']:.3g} ± {s['sd']:.2g} ({s['median']:.3g})")
            L.append(f"| {p} | {o} | " + " | ".join(cells) + " |")
    L += [""] + [f"![{f}]({f})" for f in files if f.startswith("toy_")]
    L += ["", "## 2. Fashion-MNIST", "",
          "Debian's `dataset-fashion-mnist`; " + "; ".join(f"{m}: first {n} training images, {e} epochs"
                                                          for m, (n, e) in cfg["models"].items())
          + f"; test on the first {cfg['test_size']} test images; batch 128. lr: "
          + ", ".join(f"{o} {lr:g}" for o, lr in images.LRS.items()) + " (SGD with momentum 0.9); multiplicative and "
          f"hybrid use lr_in = 1, lr_out = {images.OUT_SCALE:g} x lr (see section 3: with lr_out = lr the multiplicative "
          f"term is far below its optimum); hybrid gamma = {images.GAMMA}.", "",
          "| model | optimizer | additive | multiplicative | hybrid |", "|---|---|---|---|---|"]
    for m in cfg["models"]:
        for o in images.LRS:
            cells = []
            for r in toy.RULES:
                runs = [v["accuracy"] for k, v in res["images"].items() if k.startswith(f"{m}/{o}/{r}/")]
                mu, sd = mean_sd([a[-1] * 100 for a in runs])
                ep = [images.epochs_to(a, cfg["target"][m]) for a in runs]
                reach = "/".join("-" if e is None else str(e) for e in ep)
                cells.append(f"{mu:.2f} ± {sd:.2f} (epochs to {cfg['target'][m] * 100:.0f}%: {reach})")
            L.append(f"| {m} | {o} | " + " | ".join(cells) + " |")
    L += [""] + [f"![{f}]({f})" for f in files if f.startswith("images_")]
    L += ["", "## 3. Sensitivity (MLP, final test accuracy %, one seed)", "",
          "| optimizer | lr | additive | multiplicative | hybrid |", "|---|---|---|---|---|"]
    for o, lrs in cfg["sens_lrs"].items():
        for lr in lrs:
            L.append(f"| {o} | {lr:g} | " + " | ".join(f"{res['sensitivity'][f'{o}/{r}/{lr:g}'] * 100:.2f}" for r in toy.RULES) + " |")
    L += ["", "![sensitivity](sensitivity.png)", "", "## What agrees with the paper, and what does not", ""]
    for k, opts in findings(res, cfg).items():
        L.append(f"- {k}: holds for {', '.join(opts) if opts else 'none'} of {', '.join(toy.OPTIMIZERS)}.")
    L += ["", "Why results agree or differ, and what `--quick` asserts: [DISCUSSION.md](DISCUSSION.md) "
          "(written by hand from the committed full run)."]
    (out / "REPORT.md").write_text("\n".join(L) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Reproduce the paper's experiments through the mur server.")
    ap.add_argument("--quick", action="store_true", help="small sizes (about 3 minutes); asserts robust findings")
    ap.add_argument("--out", default=None, help="output directory (default results/, or results/quick with --quick)")
    ap.add_argument("--replot", action="store_true", help="redo plots and report from an existing results.json")
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    root = Path(__file__).resolve().parents[3]
    out = Path(a.out) if a.out else root / "results" / ("quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    if a.replot:  # plots and report again from results.json (no training)
        res = json.loads((out / "results.json").read_text())
        files = plot_toy(res["toy"], out) + plot_images(res["images"], out) + plot_sensitivity(res["sensitivity"], cfg["sens_lrs"], out)
        report(res, cfg, files, out, a.quick, res["wall_seconds"])
        print(f"wrote {out / 'REPORT.md'} and {len(files)} plots from {out / 'results.json'}")
        return 0
    torch.set_num_threads(1)
    start = time.time()
    with mur.LocalServer() as server:
        res = {"versions": versions(server.backend), "config": {k: v for k, v in cfg.items()}}
        res["toy"] = run_toy(cfg, server.address)
        res["images"] = run_images(cfg, server.address)
        res["sensitivity"] = run_sensitivity(cfg, server.address)
    wall = time.time() - start
    res["wall_seconds"] = wall
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    files = plot_toy(res["toy"], out) + plot_images(res["images"], out) + plot_sensitivity(res["sensitivity"], cfg["sens_lrs"], out)
    report(res, cfg, files, out, a.quick, wall)
    print(f"wrote {out / 'REPORT.md'}, results.json and {len(files)} plots in {wall / 60:.1f} min")
    if a.quick:
        return check_quick(res)
    return 0


CHECKS = 2


def check_quick(res):
    """What --quick asserts: only findings that the full run shows too
    (results/REPORT.md), and that hold with margin at the quick size."""
    failures = []
    # 1. Every image run learned something through the server.
    for k, v in res["images"].items():
        if v["accuracy"][-1] < 0.5:
            failures.append(f"[1] {k}: test accuracy {v['accuracy'][-1]:.3f} < 0.5")
    # 2. Robustness to the learning rate: at the largest rate of the sweep the
    #    hybrid rule still trains where the additive rule has broken down.
    for o, lrs in QUICK["sens_lrs"].items():
        hy, ad = (res["sensitivity"][f"{o}/{r}/{lrs[-1]:g}"] for r in ("hybrid", "additive"))
        if not hy > ad + 0.1:
            failures.append(f"[2] sensitivity/{o} at lr {lrs[-1]:g}: hybrid {hy:.3f} not above additive {ad:.3f} + 0.1")
    for msg in failures:
        print("reproduce --quick: FAILED:", msg)
    failed = len({m[:3] for m in failures})  # checks with at least one failure
    print(f"reproduce: {CHECKS - failed} passed, {failed} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
