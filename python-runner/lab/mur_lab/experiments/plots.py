"""The report's figures. Conventions: one colour per rule everywhere, seed
bands (min to max over the seeds) around seed means, shared axes where
panels are compared, integer epoch ticks, and log axes that say where an
exact 0 is drawn."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from mur_lab.experiments import images, spaces, toy

COLORS = {"additive": "C0", "multiplicative": "C1", "hybrid": "C2"}
ZERO = 1e-12  # where a distance of exactly 0 is drawn on a log axis
CAP = 1e2  # relative distances above (runs that blew up but stayed finite) are drawn at CAP, as triangles


def _save(fig, out, name):
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


def _panels(n, **kw):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False, **kw)
    return fig, axes[0]


def toy_trajectories(task, t, cfg, out):
    prob = toy.PROBLEMS[task]
    (lo_x, hi_x), (lo_y, hi_y) = prob["window"]  # fixed, so one wild first step does not hide the rest
    X, Y = np.meshgrid(np.linspace(lo_x, hi_x, 200), np.linspace(lo_y, hi_y, 200))
    Z = prob["f"](torch.tensor(np.stack([X, Y]))).numpy()
    fig, axes = _panels(len(cfg["optimizers"]), sharex=True, sharey=True)
    for ax, o in zip(axes, cfg["optimizers"]):
        ax.contour(X, Y, np.log1p(Z), levels=25, cmap="Greys", linewidths=0.5)
        for r in spaces.RULES:
            c = t["cells"][f"{o}/{r}"]
            if not c["final"]:
                continue
            path = np.array([xy for xy in c["final"][0]["path"] if all(map(math.isfinite, xy))])
            ax.plot(
                path[:, 0],
                path[:, 1],
                ".-",
                ms=2,
                lw=1,
                color=COLORS[r],
                label=f"{r}: {spaces.label(c['tuning']['best'])}",
            )
        ax.plot(*prob["start"], "ko", ms=7, label="start")
        ax.plot(*prob["minimum"], "r*", ms=12, label="minimum")
        ax.set_xlim(lo_x, hi_x)
        ax.set_ylim(lo_y, hi_y)
        ax.set_title(f"{task}: {o} (tuned, seed 0)")
        ax.set_xlabel("x")
        ax.legend(fontsize=6, loc="upper left")
    axes[0].set_ylabel("y")
    return _save(fig, out, f"trajectories_{task}.png")


def toy_distance(task, t, cfg, out):
    fig, axes = _panels(len(cfg["optimizers"]), sharey=True)
    for ax, o in zip(axes, cfg["optimizers"]):
        for r in spaces.RULES:
            c = t["cells"][f"{o}/{r}"]
            if not c["final"]:
                continue
            runs = [[max(toy.distance(task, xy), ZERO) for xy in f["path"]] for f in c["final"]]
            n = min(len(x) for x in runs)  # a diverged seed ends early (its last point is inf)
            d = np.array([x[:n] for x in runs])
            finite = np.isfinite(d).all(axis=0)
            it = np.arange(n)[finite]
            ax.semilogy(it, np.exp(np.log(d[:, finite]).mean(axis=0)), color=COLORS[r], label=r)
            ax.fill_between(it, d[:, finite].min(axis=0), d[:, finite].max(axis=0), color=COLORS[r], alpha=0.25)
            if not finite.all():
                ax.plot(it[-1], d[0, finite][-1], "x", color=COLORS[r], ms=9)
        ax.axhline(toy.TARGET * toy.start_distance(task), color="grey", ls="--", lw=0.8, label="target")
        ax.set_title(f"{task}: {o}")
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(f"distance to the minimum (log; exactly 0 drawn at {ZERO:g})")
    axes[0].legend(fontsize=7, title="band: min-max over seeds; x: diverged", title_fontsize=6)
    return _save(fig, out, f"distance_{task}.png")


def image_curves(task, t, cfg, out):
    fig, axes = _panels(len(cfg["optimizers"]), sharex=True, sharey=True)
    spe = t["steps_per_epoch"]
    for ax, o in zip(axes, cfg["optimizers"]):
        for r in spaces.RULES:
            c = t["cells"][f"{o}/{r}"]
            runs = [f["curve"] for f in c["final"] if not f["diverged"]]
            if not runs:
                continue
            n = min(len(x) for x in runs)
            steps = np.array([s for s, _ in runs[0][:n]]) / spe
            acc = 100 * np.array([[a for _, a in x[:n]] for x in runs])
            ax.plot(
                steps, acc.mean(axis=0), "o-", ms=3, color=COLORS[r], label=f"{r}: {spaces.label(c['tuning']['best'])}"
            )
            ax.fill_between(steps, acc.min(axis=0), acc.max(axis=0), color=COLORS[r], alpha=0.25)
        ax.axhline(100 * images.TARGET, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{task}: {o}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(
            fontsize=6, loc="lower right", title=f"mean; band: min-max over {len(cfg['seeds'])} seeds", title_fontsize=6
        )
    axes[0].set_ylabel("test accuracy % (dashed: the target)")
    return _save(fig, out, f"accuracy_{task}.png")


def sweep(task, t, cfg, out):
    fig, axes = _panels(len(cfg["optimizers"]), sharex=True, sharey=True)
    toy_kind = cfg["kind"] == "toy"
    for ax, o in zip(axes, cfg["optimizers"]):
        for r in spaces.RULES:
            sw = t["cells"][f"{o}/{r}"]["sweep"]
            if not sw:
                continue
            f = np.array([float(k) for k in sw])
            if toy_kind:
                y = np.array([np.nan if v is None else min(max(v, ZERO), CAP) for v in sw.values()])
                high = y >= CAP
                ax.plot(f[high], y[high], "^", color=COLORS[r], ms=8)
            else:
                y = np.array([np.nan if v is None else 100 * v for v in sw.values()])
            ax.plot(f, y, "o-", color=COLORS[r], label=r)
            bad = np.isnan(y)
            if bad.any():  # diverged: an x on the bottom edge (accuracy) or top edge (distance)
                ax.plot(f[bad], np.full(bad.sum(), CAP if toy_kind else 0.0), "x", color=COLORS[r], ms=9)
        if toy_kind:
            ax.set_yscale("log")
            ax.axhline(toy.TARGET, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{task}: {o} (one run per factor)")
        ax.set_xlabel("factor on the tuned lr and lr_out")
    axes[0].set_ylabel(
        f"final distance / start (log; 0 at {ZERO:g}, above {CAP:g} at {CAP:g} as a triangle; x: diverged)"
        if toy_kind
        else "validation accuracy % (x: diverged)"
    )
    axes[0].legend(fontsize=7)
    return _save(fig, out, f"sweep_{task}.png")


def robustness(task, t, cfg, out):
    """Every random-phase trial of every cell: one dot each; the count of
    diverged ones written above the column (they have no outcome)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(cfg["optimizers"])), 4.2))
    toy_kind = cfg["kind"] == "toy"
    ticks = []
    for i, o in enumerate(cfg["optimizers"]):
        for j, r in enumerate(spaces.RULES):
            x = 4 * i + j
            trials = [tr for tr in t["cells"][f"{o}/{r}"]["tuning"]["trials"] if tr["random"] and "error" not in tr]
            ys = [
                (min(max(10 ** -tr["score"], ZERO), CAP) if toy_kind else 100 * tr["score"])
                for tr in trials
                if tr["score"] is not None
            ]
            div = len(trials) - len(ys)
            jitter = np.linspace(-0.25, 0.25, len(ys)) if ys else []
            ax.plot(x + np.asarray(jitter), ys, "o", ms=3, alpha=0.7, color=COLORS[r], label=r if i == 0 else None)
            if ys:
                ax.plot([x - 0.35, x + 0.35], [np.median(ys)] * 2, "k-", lw=1.5)
            ax.annotate(
                f"{div} div.", (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=6
            )
        ticks.append((4 * i + 1, o))
    ax.set_xticks([p for p, _ in ticks], [o for _, o in ticks])
    if toy_kind:
        ax.set_yscale("log")
        ax.axhline(toy.TARGET, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(f"final distance / start (log; 0 at {ZERO:g}, above {CAP:g} at {CAP:g})")
    else:
        ax.axhline(100 * images.TRAINS, color="grey", ls="--", lw=0.8)
        ax.set_ylabel("validation accuracy %")
    ax.set_title(f"{task}: random configurations (bar: median; dashed: 'trains'; div.: diverged)", fontsize=9, pad=14)
    ax.legend(fontsize=7)
    return _save(fig, out, f"robustness_{task}.png")


def all_plots(res, analysis, out):
    files = []
    for task, cfg in res["config"].items():
        t = res["tasks"][task]
        if cfg["kind"] == "toy":
            files += [toy_trajectories(task, t, cfg, out), toy_distance(task, t, cfg, out)]
        else:
            files.append(image_curves(task, t, cfg, out))
        if cfg["sweep"]:
            files.append(sweep(task, t, cfg, out))
        files.append(robustness(task, t, cfg, out))
    return files
