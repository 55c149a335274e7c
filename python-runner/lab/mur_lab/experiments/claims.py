"""The paper's claims and their verdicts, computed from the numbers.

A claim compares a rule (hybrid or multiplicative) with the additive rule in
each cell (task x optimizer). A cell comparison is "better", "worse", "tie",
or None when the cell has no data for it (e.g. neither rule reached the
target). The verdict over the cells that have data:

- holds: better in at least 2/3 of them and worse in at most 1/6;
- does not hold: better in at most 1/3 and worse in at least 1/3;
- inconclusive at this scale: anything else, or fewer than MIN_CELLS cells.

The thresholds below were fixed before the full run was looked at.
"""

import math
import statistics

HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive at this scale"
MIN_CELLS = 3
THRESHOLDS = {
    # final accuracy: the difference of seed means must exceed both 0.5 points
    # and twice its standard error
    "accuracy_points": 0.5,
    "se_factor": 2.0,
    # toy problems: the final distance must differ by a factor of 2
    "distance_factor": 2.0,
    # faster training: median steps to the target, at least one evaluation interval apart
    "steps_intervals": 1,
    # robustness: share of random configurations that train, 0.15 apart
    "share": 0.15,
    # learning-rate robustness: at least 2 more (or fewer) sweep factors that train well
    # (the factors are half a decade apart, so 2 is a decade)
    "width": 2,
}


def _mean_se(xs):
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return statistics.fmean(xs), se


def compare_accuracy(rule, additive):
    """Seed accuracies (fractions) of the rule and of additive."""
    if not rule or not additive:
        return None
    (mr, sr), (ma, sa) = _mean_se([100 * x for x in rule]), _mean_se([100 * x for x in additive])
    margin = max(THRESHOLDS["accuracy_points"], THRESHOLDS["se_factor"] * math.hypot(sr, sa))
    return "better" if mr - ma > margin else "worse" if ma - mr > margin else "tie"


def compare_distance(rule, additive):
    """Final distances to the minimum (inf: diverged); smaller is better."""
    if rule is None or additive is None:
        return None
    if math.isinf(rule) or math.isinf(additive):
        return None if rule == additive else ("worse" if math.isinf(rule) else "better")
    f = THRESHOLDS["distance_factor"]
    # a distance of exactly 0 beats any positive one
    return "better" if rule * f < additive else "worse" if additive * f < rule else "tie"


def compare_steps(rule, additive, interval):
    """Steps to the target per seed (None: not reached)."""
    med = lambda xs: statistics.median([math.inf if x is None else x for x in xs])  # noqa: E731
    if not rule or not additive:
        return None
    r, a = med(rule), med(additive)
    if math.isinf(r) and math.isinf(a):
        return None
    gap = THRESHOLDS["steps_intervals"] * interval
    return "better" if r + gap <= a else "worse" if a + gap <= r else "tie"


def compare_share(rule, additive):
    """Shares in [0, 1] of random configurations that train."""
    if rule is None or additive is None:
        return None
    d = rule - additive
    return "better" if d >= THRESHOLDS["share"] else "worse" if -d >= THRESHOLDS["share"] else "tie"


def compare_width(rule, additive):
    """Numbers of sweep factors that train well."""
    if rule is None or additive is None:
        return None
    d = rule - additive
    return "better" if d >= THRESHOLDS["width"] else "worse" if -d >= THRESHOLDS["width"] else "tie"


def verdict(outcomes):
    """outcomes: {cell: "better" | "worse" | "tie" | None} -> (verdict, {kind: [cells]})."""
    by = {k: sorted(c for c, o in outcomes.items() if o == k) for k in ("better", "worse", "tie")}
    n = sum(len(v) for v in by.values())
    if n < MIN_CELLS:
        return OPEN, by
    b, w = len(by["better"]), len(by["worse"])
    if b >= 2 * n / 3 and w <= n / 6:
        return HOLDS, by
    if b <= n / 3 and w >= n / 3:
        return FAILS, by
    return OPEN, by


def evidence(by, what):
    """One sentence; every cell is named once."""
    n = sum(len(v) for v in by.values())
    if n == 0:
        return f"{what}: no cell has data"
    parts = []
    for kind in ("better", "worse", "tie"):
        cells = by[kind]
        if cells:
            parts.append(f"{kind} in {len(cells)} ({', '.join(cells)})")
        else:
            parts.append(f"{kind} in 0")
    return f"{what}, {n} cells: " + "; ".join(parts)
