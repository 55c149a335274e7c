"""From results.json to numbers per cell, the claims' verdicts, and REPORT.md;
and `prose_problems`, the check that the generated prose is not garbled."""

import math
import re
import statistics

from mur_lab.experiments import claims, images, spaces, toy

CONTENDERS = ["hybrid", "multiplicative"]
TOY_INTERVAL = 5  # iterations: "faster" on a toy problem means at least 5 of 100 iterations fewer
PAPER = {  # Kirtas et al. (2024), toy problems: distance after 100 iterations, best configuration
    "convex": {
        "sgd": (8.61e-1, 2.92e-5, 3.57e-7),
        "adagrad": (5.80e-4, 1.35e-4, 1.68e-7),
        "adam": (3.75e-2, 7.44e-3, 4.47e-3),
        "rmsprop": (1.82e-5, 7.58e-6, 1.68e-7),
    },
    "rosenbrock": {
        "sgd": (1.38, 7.70e-2, 2.04e-2),
        "adagrad": (4.60e-1, 1.88e-1, 1.26e-2),
        "adam": (8.24e-1, 7.84e-2, 5.73e-2),
        "rmsprop": (4.58e-1, 1.85e-1, 5.06e-2),
    },
}
CLAIMS = [
    ("faster", "faster training: steps to the target", "fewer steps (epochs x steps per epoch) to the target"),
    ("final", "final accuracy", "higher test accuracy (toy: smaller distance after 100 iterations)"),
    ("robust", "robust across hyperparameters", "larger share of random configurations that train"),
    ("lr", "robust to the learning rate", "more sweep factors that train well"),
]


def median_iqr(xs):
    """(median, first quartile, third quartile) of a non-empty list."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def _random_summary(trials, outcome, trains):
    """Random-phase trials: share that trains, diverged count, median and IQR of the non-diverged outcomes."""
    errors = sum(1 for t in trials if t["random"] and "error" in t)
    rand = [t for t in trials if t["random"] and "error" not in t]
    ok = [outcome(t["score"]) for t in rand if t["score"] is not None]
    s = {
        "n": len(rand),
        "diverged": len(rand) - len(ok),
        "errors": errors,
        "share": sum(1 for t in rand if t["score"] is not None and trains(t["score"])) / len(rand) if rand else None,
    }
    if ok:
        s["median"], s["q1"], s["q3"] = median_iqr(ok)
    return s


def analyse(res):
    """{"cells": {task: {optimizer: {rule: summary}}}, "claims": [...]}"""
    cells, outcomes = {}, {c[0]: {k: {} for k in CONTENDERS} for c in CLAIMS}
    for task, t in res["tasks"].items():
        cfg = res["config"][task]
        kind = cfg["kind"]
        cells[task] = {}
        for o in cfg["optimizers"]:
            row = {}
            for r in spaces.RULES:
                c = t["cells"][f"{o}/{r}"]
                s = {"config": c["tuning"]["best"], "tuning_seconds": c["tuning"]["seconds"]}
                if kind == "toy":
                    s["distances"] = [f["distance"] for f in c["final"]]
                    s["distance"] = statistics.median(s["distances"]) if s["distances"] else None
                    s["steps"] = [f["iterations"] for f in c["final"]]
                    s["interval"] = TOY_INTERVAL
                    s["random"] = _random_summary(c["tuning"]["trials"], lambda v: 10**-v, lambda v: v >= 1)
                    s["sweep_ok"] = (
                        sum(1 for v in c["sweep"].values() if v is not None and v <= toy.TARGET) if c["sweep"] else None
                    )
                else:
                    s["accs"] = [f["final"] for f in c["final"] if f["final"] is not None]
                    s["diverged_seeds"] = sum(1 for f in c["final"] if f["final"] is None)
                    s["steps"] = [images.steps_to(f["curve"], images.TARGET) for f in c["final"]]
                    s["interval"] = max(1, t["steps_per_epoch"] // cfg["curve_per_epoch"])
                    s["random"] = _random_summary(c["tuning"]["trials"], lambda v: v, lambda v: v >= images.TRAINS)
                row[r] = s
            if kind == "image" and cfg["sweep"]:
                # "trains well" in the sweep: within 5 points of the best accuracy of the cell's whole sweep
                best = max(
                    (v for r in spaces.RULES for v in t["cells"][f"{o}/{r}"]["sweep"].values() if v is not None),
                    default=None,
                )
                for r in spaces.RULES:
                    sw = t["cells"][f"{o}/{r}"]["sweep"]
                    row[r]["sweep_ok"] = (
                        sum(1 for v in sw.values() if v is not None and v >= best - 0.05)
                        if best is not None and sw
                        else None
                    )
                    row[r]["sweep_best"] = best
            elif kind == "image":
                for r in spaces.RULES:
                    row[r]["sweep_ok"] = None
            cells[task][o] = row
            a = row["additive"]
            for k in CONTENDERS:
                x, key = row[k], f"{task}/{o}"
                outcomes["faster"][k][key] = claims.compare_steps(x["steps"], a["steps"], a["interval"])
                if kind == "toy":
                    outcomes["final"][k][key] = claims.compare_distance(x["distance"], a["distance"])
                else:
                    outcomes["final"][k][key] = claims.compare_accuracy(x["accs"], a["accs"])
                outcomes["robust"][k][key] = claims.compare_share(x["random"]["share"], a["random"]["share"])
                outcomes["lr"][k][key] = claims.compare_width(x["sweep_ok"], a["sweep_ok"])
    verdicts = []
    for key, name, what in CLAIMS:
        for k in CONTENDERS:
            v, by = claims.verdict(outcomes[key][k])
            verdicts.append(
                {
                    "claim": name,
                    "contender": k,
                    "verdict": v,
                    "by": by,
                    "evidence": claims.evidence(by, f"{k} vs additive, {what}"),
                }
            )
    return {"cells": cells, "claims": verdicts}


# ---------------------------------------------------------------- formatting
def fmt_distance(d):
    if d is None or math.isinf(d):
        return "diverged"
    return "0 (exactly)" if d == 0 else f"{d:.3g}"


def fmt_steps(steps):
    return "/".join("not reached" if s is None else str(s) for s in steps) or "n/a"


def fmt_random(s, pct):
    if not s["n"]:
        return "n/a"
    txt = f"{100 * s['share']:.0f}% of {s['n']} train"
    if "median" in s:
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2g}")
        txt += f"; median {f(s['median'])} [IQR {f(s['q1'])}, {f(s['q3'])}]"
    txt += f"; {s['diverged']} diverged"
    if s["errors"]:
        txt += f"; {s['errors']} failed with a server error (left out)"
    return txt


def fmt_config(c):
    return "no configuration trained" if c is None else spaces.label(c)


def write(res, an, files, out):
    v = res["versions"]
    quick = res.get("quick", False)
    L = [
        f"# mur: reproducing Kirtas, Passalis, Tefas (2024) through the service{' (quick run)' if quick else ''}",
        "",
        f"Generated by `python -m mur_lab.experiments.reproduce{' --quick' if quick else ''}` (`make reproduce`). "
        f"Every optimizer step was computed by one local mur server (backend `{v['server_backend']}`, the default "
        f"engine, shared-memory transport) through `mur.RemoteOptimizer`; tuning by Optuna {v['optuna']} (TPE).",
        "",
        f"Machine: {v['cpus']} CPUs (shared with other jobs during the run), {v['memory_gib']} GiB, {v['machine']}; "
        f"Python {v['python']}, torch {v['torch']}, Node {v['node']}, mur {v['mur']}. "
        f"**Wall time {res['wall_seconds'] / 60:.1f} min.**",
        "",
        "## Verdicts",
        "",
        "Each claim compares a rule with the additive rule in every task x optimizer cell, after each was tuned "
        "with the same budget. A cell is *better*, *worse* or a *tie* by these thresholds, fixed before the run: "
        f"final accuracy, a difference of seed means above both {claims.THRESHOLDS['accuracy_points']} points and "
        f"{claims.THRESHOLDS['se_factor']:g} standard errors (toy problems: a factor of "
        f"{claims.THRESHOLDS['distance_factor']:g} in final distance); faster, a median at least one evaluation "
        f"interval fewer steps to the target ({images.TARGET * 100:.0f}% test accuracy; toy problems: within "
        f"{toy.TARGET:g} x the start distance, interval {TOY_INTERVAL} iterations), cells where neither rule reaches "
        f"it are left out; robustness, a share of random configurations that train at least "
        f"{claims.THRESHOLDS['share']:g} apart; learning rate, at least {claims.THRESHOLDS['width']} sweep factors "
        f"more or fewer. The claim *holds* when the rule is better in at least 2/3 of the cells with data and worse "
        f"in at most 1/6; it *does not hold* when better in at most 1/3 and worse in at least 1/3; otherwise, or "
        f"with fewer than {claims.MIN_CELLS} cells, it is *inconclusive at this scale*.",
        "",
        "| claim | rule | evidence | verdict |",
        "|---|---|---|---|",
    ]
    for c in an["claims"]:
        L.append(f"| {c['claim']} | {c['contender']} | {c['evidence']} | **{c['verdict']}** |")
    L += [
        "",
        "The same cell comparisons split by task (better / worse / tie; cells without data left out):",
        "",
        "| task | " + " | ".join(f"{name} ({k})" for _, name, _ in CLAIMS for k in CONTENDERS) + " |",
        "|---|" + "---|" * (len(CLAIMS) * len(CONTENDERS)),
    ]
    for task in res["config"]:
        row = []
        for c in an["claims"]:
            n = [sum(1 for cell in c["by"][kind] if cell.split("/")[0] == task) for kind in ("better", "worse", "tie")]
            row.append("-" if sum(n) == 0 else " / ".join(map(str, n)))
        L.append(f"| {task} | " + " | ".join(row) + " |")
    L += [
        "",
        "## Budget",
        "",
        "Per cell (task x optimizer x rule) the same number of Optuna trials; the first ones are drawn at random "
        "from the rule's space (they are also the robustness sample), the rest by TPE. Image trials are scored on "
        "a validation split carved from the training set; the best configuration is then retrained with each seed "
        "and scored on the test set. Toy trials are scored by the final distance (the toy problems have no data "
        "to split).",
        "",
        "| task | optimizers | trials per cell (random) | trial | retrained | seeds | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, cfg in res["config"].items():
        t = res["tasks"][task]
        if cfg["kind"] == "toy":
            trial, final = f"{toy.ITERATIONS} iterations", f"{toy.ITERATIONS} iterations"
        else:
            trial = (
                f"{cfg['trial_epochs']} epoch(s) of {cfg['train']} images ({t['steps_per_epoch']} steps per "
                f"epoch), scored on {cfg['val']} validation images"
            )
            final = f"{cfg['epochs']} epochs, scored on {cfg['test']} test images"
        L.append(
            f"| {task} | {', '.join(cfg['optimizers'])} | {cfg['trials']} ({cfg['random']}) | {trial} | {final} | "
            f"{len(cfg['seeds'])} | {t['seconds'] / 60:.1f} min |"
        )
    errors = sum(
        len(c.get("errors", [])) + sum(1 for tr in c["tuning"]["trials"] if "error" in tr)
        for t in res["tasks"].values()
        for c in t["cells"].values()
    )
    L += [
        "",
        (
            f"{errors} runs failed with a server error; they are left out of every number (results.json has "
            "the messages)."
            if errors
            else "No run failed with a server error."
        ),
        "",
    ]
    L += ["Search spaces (toy problems: lr in [1e-4, 1]; images: lr in [1e-5, 1]):", ""]
    for r in spaces.RULES:
        L.append(f"- {r}: {spaces.describe(r, images.LR_RANGE)}.")
    L += [
        "",
        "SGD runs without momentum (`sgd`) and with momentum 0.9 (`sgd+momentum`, the usual image setting and "
        "a setting the paper's Rosenbrock figures suggest). Learning-rate sweep: the tuned lr and lr_out both "
        f"multiplied by {', '.join(f'{f:.3g}' for f in spaces.FACTORS)}.",
        "",
    ]
    for task, cfg in res["config"].items():
        L += _toy_section(task, an) if cfg["kind"] == "toy" else _image_section(task, cfg, an, res)
        L += [f"![{f}]({f})" for f in files if f.split("_")[-1].split(".")[0] == task] + [""]
    L += ["## Closing note", ""]
    counts = {}
    for c in an["claims"]:
        counts.setdefault(c["verdict"], []).append(f"{c['claim']} ({c['contender']})")
    for verdict in (claims.HOLDS, claims.FAILS, claims.OPEN):
        items = counts.get(verdict, [])
        L.append(f"- {verdict}: {len(items)} of {len(an['claims'])}" + (f": {'; '.join(items)}." if items else "."))
    L += [
        "",
        f"The whole run took {res['wall_seconds'] / 60:.1f} min on this machine. Why the results agree or "
        "differ with the paper: [DISCUSSION.md](DISCUSSION.md) (written by hand from the committed full run).",
    ]
    text = "\n".join(L) + "\n"
    (out / "REPORT.md").write_text(text)
    return text


def _toy_section(task, an):
    prob = toy.PROBLEMS[task]
    L = [
        f"## Toy problem: {task}",
        "",
        f"f = {prob['formula']}, start ({prob['start'][0]:.4g}, {prob['start'][1]:.4g}), minimum {prob['minimum']}, "
        f"start distance {toy.start_distance(task):.4g}; {toy.ITERATIONS} iterations.",
    ]
    if task == "convex":
        L[-1] += (
            " The paper's convex function is not published; ours is an ill-conditioned quadratic (condition "
            "number 10) with its minimum away from the axes, started at the paper's distance in the minimum's "
            "quadrant (a purely multiplicative rule never changes a weight's sign)."
        )
    L += [
        "",
        "| optimizer | rule | chosen configuration | final distance (paper) | iterations to the target | "
        "random configurations: share that train, final distance / start | sweep factors that train |",
        "|---|---|---|---|---|---|---|",
    ]
    for o, row in an["cells"][task].items():
        for i, r in enumerate(spaces.RULES):
            s = row[r]
            paper = f" ({PAPER[task][o][i]:.3g})" if o in PAPER[task] else ""
            L.append(
                f"| {o} | {r} | {fmt_config(s['config'])} | {fmt_distance(s['distance'])}{paper} | "
                f"{fmt_steps(s['steps'])} | {fmt_random(s['random'], False)} | "
                f"{'n/a' if s['sweep_ok'] is None else s['sweep_ok']} |"
            )
    return L + [""]


def _image_section(task, cfg, an, res):
    L = [
        f"## Fashion-MNIST: {task}",
        "",
        f"Training on {cfg['train']} images, validation on {cfg['val']} other training images, test on the first "
        f"{cfg['test']} test images (curves on the first {cfg['curve']}, {cfg['curve_per_epoch']} points per epoch); "
        f"batch {images.BATCH}; {res['tasks'][task]['steps_per_epoch']} steps per epoch.",
        "",
        f"| optimizer | rule | chosen configuration | test accuracy % (mean ± sd over seeds) | steps to "
        f"{images.TARGET * 100:.0f}% per seed | random configurations: share that train (>= {images.TRAINS * 100:.0f}% "
        "validation accuracy), validation accuracy | sweep factors that train well |",
        "|---|---|---|---|---|---|---|",
    ]
    for o, row in an["cells"][task].items():
        for r in spaces.RULES:
            s = row[r]
            accs = [100 * a for a in s["accs"]]
            acc = (
                f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs) if len(accs) > 1 else 0:.2f}"
                if accs
                else "n/a"
            )
            if s["diverged_seeds"]:
                acc += f" ({s['diverged_seeds']} seeds diverged)"
            L.append(
                f"| {o} | {r} | {fmt_config(s['config'])} | {acc} | {fmt_steps(s['steps'])} | "
                f"{fmt_random(s['random'], True)} | {'n/a' if s['sweep_ok'] is None else s['sweep_ok']} |"
            )
    return L + [""]


# ---------------------------------------------------------------- prose check
# A list item is a word (a cell, an optimizer, a rule), not a number ("[0, 1]"
# is an interval), and ends on a word character (a full stop is not part of it).
_ITEM = r"[A-Za-z](?:[\w+./-]*[\w+])?"
_LIST = rf"{_ITEM}(?:, {_ITEM})+"
VERDICTS = (claims.HOLDS, claims.FAILS, claims.OPEN)


def prose_problems(text):
    """What is wrong with a generated report's prose: a list repeated in one
    line, "of" joining two lists, placeholders (1e6, nan, None, braces of an
    unformatted f-string), a missing verdict table or a row without a verdict."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        lists = re.findall(_LIST, line)
        seen = set()
        for lst in lists:
            if lst in seen:
                problems.append(f"line {n}: the list '{lst}' is repeated")
            seen.add(lst)
        if re.search(rf"{_LIST} of {_LIST}", line):
            problems.append(f"line {n}: 'of' joins two lists")
        if re.search(r"(?<![\w.])(1e\+?0?6|1000000(\.0)?|nan|None|inf)(?![\w.])", line) or re.search(r"[{}]", line):
            problems.append(f"line {n}: a placeholder: {line.strip()[:120]}")
    lines = text.splitlines()
    try:
        h = lines.index("| claim | rule | evidence | verdict |")
    except ValueError:
        return problems + ["no verdict table (header '| claim | rule | evidence | verdict |')"]
    rows = [ln for ln in lines[h + 2 :] if ln.startswith("|")]
    rows = rows[: next((i for i, ln in enumerate(lines[h + 2 :]) if not ln.startswith("|")), len(rows))]
    if len(rows) < len(CLAIMS):
        problems.append(f"the verdict table has {len(rows)} rows, fewer than the {len(CLAIMS)} claims")
    for ln in rows:
        if not any(f"**{v}**" in ln for v in VERDICTS):
            problems.append(f"a verdict row without a verdict: {ln[:120]}")
    return problems
