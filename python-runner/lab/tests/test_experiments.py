"""The experiment code itself, on tiny sizes (no server needed)."""

import gzip
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import mur
from mur_lab.data import read_idx
from mur_lab.experiments import claims, images, report, spaces, toy, tuning

RESULTS = Path(__file__).resolve().parents[3] / "results"


def test_problems_start_where_documented():
    assert toy.start_distance("rosenbrock") == pytest.approx(2.0616, abs=1e-4)
    assert toy.start_distance("convex") == pytest.approx(69.26, abs=1e-9)
    for p in toy.PROBLEMS.values():
        assert float(p["f"](list(p["minimum"]))) == 0.0


def test_distance_of_a_diverged_point_is_infinite_and_scores_none():
    assert toy.distance("convex", (math.inf, math.inf)) == math.inf
    assert toy.score("convex", [toy.PROBLEMS["convex"]["start"], (math.inf, math.inf)]) is None
    assert toy.score("convex", [(1.0, 2.0)]) == 30.0  # exactly at the minimum: the floor orders it first


def test_iterations_to_target():
    start = toy.PROBLEMS["convex"]["start"]
    near = (1.0 + 0.05 * 69.26, 2.0)  # within 0.1 x the start distance
    assert toy.iterations_to_target("convex", [start, start, near]) == 2
    assert toy.iterations_to_target("convex", [start, start]) is None


def test_random_configurations_stay_in_their_spaces():
    for rule, keys in [("additive", {"lr"}), ("multiplicative", {"lr_in", "lr_out"})]:
        for c in spaces.random_configs(rule, (1e-4, 1.0), 50, 0):
            assert set(c) == keys
    for c in spaces.random_configs("hybrid", (1e-4, 1.0), 300, 1):
        assert 1e-4 <= c["lr"] <= 1 and 0.1 <= c["lr_in"] <= 10 and 1e-3 <= c["lr_out"] <= 1 and 0 <= c["gamma"] <= 1
        assert c["schedule"] in spaces.SCHEDULES
        assert ("decay_rate" in c) == (c["schedule"] in ("decay", "inverse"))
    # every schedule is drawn
    assert {c["schedule"] for c in spaces.random_configs("hybrid", (1e-4, 1.0), 100, 2)} == set(spaces.SCHEDULES)


def test_hyperparameters_and_sweep_scaling():
    c = {"lr_in": 2.0, "lr_out": 0.3}
    assert spaces.hyperparameters("sgd+momentum", "multiplicative", c) == (
        "sgd",
        {"momentum": 0.9, "lr": 0.3, "lr_in": 2.0, "lr_out": 0.3},
    )
    h = {"lr": 1e-3, "lr_in": 1.0, "lr_out": 1e-2, "gamma": 0.5, "schedule": "constant"}
    assert spaces.scaled(h, 10.0) == {**h, "lr": pytest.approx(1e-2), "lr_out": pytest.approx(0.1)}
    assert spaces.label({**h, "schedule": "decay", "decay_rate": 0.01}).endswith("decay(0.99)")


def test_schedule_is_built_from_the_configuration():
    """spaces.make on a reference optimizer stand-in: the scheduler moves gamma."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.param_groups[0]["gamma"] = 0.8

    class Fake:  # make() only needs RemoteOptimizer's constructor; swap it for a torch optimizer
        def __call__(self, params, **kw):
            return opt

    real = mur.RemoteOptimizer
    mur.RemoteOptimizer = Fake()
    try:
        _, sched = spaces.make(
            [p],
            "adam",
            "hybrid",
            {
                "lr": 0.1,
                "lr_in": 1.0,
                "lr_out": 0.1,
                "gamma": 0.8,
                "schedule": "decay",
                "decay_rate": 0.5,
                "patience": 0.5,
            },
            "unused",
            total_steps=4,
        )
        gammas = []
        for _ in range(4):
            sched.step()
            gammas.append(opt.param_groups[0]["gamma"])
        assert gammas == pytest.approx([0.8, 0.8, 0.4, 0.2])  # patience 0.5 x 4 steps = 2
        _, none = spaces.make([p], "adam", "additive", {"lr": 0.1}, "unused", total_steps=4)
        assert none is None
    finally:
        mur.RemoteOptimizer = real


def test_tuning_spends_the_same_budget_and_counts_diverged_and_failed_runs():
    calls = []

    def objective(c):
        calls.append(c)
        if len(calls) == 2:
            raise mur.MurError("boom")
        if c["lr"] > 0.1:
            return None  # diverged
        return -abs(math.log10(c["lr"]) + 2)  # best at lr = 1e-2

    t = tuning.tune(objective, "additive", (1e-4, 1.0), n_trials=12, n_random=5, seed=3)
    assert len(t["trials"]) == len(calls) == 12
    assert [tr["random"] for tr in t["trials"]] == [True] * 5 + [False] * 7
    assert t["trials"][1]["error"] == "boom" and t["trials"][1]["score"] is None
    assert all(tr["score"] is None for tr in t["trials"] if tr["config"]["lr"] > 0.1)
    assert t["best"]["lr"] <= 0.1 and t["best_score"] == max(
        tr["score"] for tr in t["trials"] if tr["score"] is not None
    )
    again = tuning.tune(lambda c: -c["lr"], "additive", (1e-4, 1.0), 4, 2, seed=3)
    assert [tr["config"] for tr in again["trials"]] == [
        tr["config"] for tr in tuning.tune(lambda c: -c["lr"], "additive", (1e-4, 1.0), 4, 2, seed=3)["trials"]
    ]
    with pytest.raises(ValueError, match="n_random=0"):
        tuning.tune(objective, "additive", (1e-4, 1.0), 4, 0, seed=0)
    assert tuning.tune(lambda c: None, "additive", (1e-4, 1.0), 3, 3, 0)["best"] is None


def test_cell_comparisons_use_the_stated_thresholds():
    assert claims.compare_accuracy([0.80, 0.81, 0.80], [0.79, 0.79, 0.79]) == "better"
    assert claims.compare_accuracy([0.792, 0.793], [0.79, 0.79]) == "tie"  # below 0.5 points
    assert claims.compare_accuracy([0.70, 0.90], [0.79, 0.79]) == "tie"  # within 2 standard errors
    assert claims.compare_accuracy([], [0.8]) is None
    assert claims.compare_distance(0.0, 1e-9) == "better"
    assert claims.compare_distance(0.3, 0.5) == "tie" and claims.compare_distance(1.1, 0.5) == "worse"
    assert claims.compare_distance(math.inf, 0.5) == "worse" and claims.compare_distance(math.inf, math.inf) is None
    assert claims.compare_steps([10, 20, None], [30, 30, 30], interval=10) == "better"
    assert claims.compare_steps([None, None], [None, None], interval=10) is None
    assert claims.compare_steps([25], [30], interval=10) == "tie"
    assert claims.compare_share(0.5, 0.3) == "better" and claims.compare_share(0.3, 0.4) == "tie"
    assert claims.compare_width(1, 3) == "worse" and claims.compare_width(None, 3) is None


def test_verdicts():
    cells = lambda *kinds: {f"t/{i}": k for i, k in enumerate(kinds)}  # noqa: E731
    assert claims.verdict(cells("better", "better", "tie"))[0] == claims.HOLDS
    assert claims.verdict(cells("better", "better", "worse"))[0] == claims.OPEN  # worse in more than 1/6
    assert claims.verdict(cells("worse", "tie", "tie"))[0] == claims.FAILS
    assert claims.verdict(cells("tie", "tie", "tie"))[0] == claims.OPEN  # nothing measurable either way
    assert claims.verdict(cells("better", "better", None, None))[0] == claims.OPEN  # too few cells with data
    v, by = claims.verdict(cells("better", "worse", "tie", None))
    assert by == {"better": ["t/0"], "worse": ["t/1"], "tie": ["t/2"]}


GARBLED = [
    "- hybrid best <= additive best: holds for sgd, adagrad, adam, rmsprop of sgd, adagrad, adam, rmsprop.",
    "- holds for sgd, adam of sgd, adagrad, adam, rmsprop.",
    "| convex | sgd | 1e6 ± 0 | 1e+06 |",
    "robust mean 1000000.0",
    "the best is {best}",
]


@pytest.mark.parametrize("line", GARBLED)
def test_prose_check_catches_garbling(line):
    assert report.prose_problems(line + "\n")


def test_prose_check_wants_a_verdict_table():
    assert any("no verdict table" in p for p in report.prose_problems("# report\n\nno table\n"))
    table = "| claim | rule | evidence | verdict |\n|---|---|---|---|\n| final | hybrid | x | maybe |\n"
    problems = report.prose_problems(table)
    assert any("without a verdict" in p for p in problems) and any("fewer than" in p for p in problems)


def _fake_results():
    """A results.json of one toy cell and one image cell per rule, as reproduce.run writes it."""

    def trials(scores):
        return [{"config": {"lr": 0.01}, "score": s, "random": i < 3} for i, s in enumerate(scores)]

    toy_cells, img_cells = {}, {}
    start = toy.PROBLEMS["convex"]["start"]
    for k, r in enumerate(spaces.RULES):
        best = (
            {"lr": 0.01, "lr_in": 1.0, "lr_out": 0.1, "gamma": 0.5, "schedule": "random"}
            if r == "hybrid"
            else {"lr": 0.01}
        )
        path = [start, (1.0 + 10**-k, 2.0)]
        toy_cells[f"sgd/{r}"] = {
            "tuning": {"best": best, "best_score": 2.0, "seconds": 1.0, "trials": trials([2.0, None, 0.5, 1.5])},
            "final": [{"seed": 0, "path": path, "distance": toy.distance("convex", path[-1]), "iterations": 1}],
            "sweep": {f"{f:g}": (None if f > 10 else 10**-k) for f in spaces.FACTORS},
        }
        img_cells[f"adam/{r}"] = {
            "tuning": {"best": best, "best_score": 0.8, "seconds": 1.0, "trials": trials([0.8, 0.4, None, 0.82])},
            "final": [
                {
                    "seed": s,
                    "final": 0.8 + 0.01 * k,
                    "diverged": False,
                    "curve": [[0, 0.1], [8, 0.7], [16, 0.8 + 0.01 * k]],
                }
                for s in (0, 1)
            ],
            "sweep": {f"{f:g}": 0.8 for f in spaces.FACTORS},
        }
    cfg = {
        "convex": dict(kind="toy", optimizers=["sgd"], trials=4, random=3, seeds=[0], sweep=True),
        "mlp": dict(
            kind="image",
            model="mlp",
            optimizers=["adam"],
            train=2000,
            val=500,
            test=2000,
            curve=500,
            trial_epochs=1,
            epochs=1,
            trials=4,
            random=3,
            seeds=[0, 1],
            sweep=True,
            curve_per_epoch=2,
        ),
    }
    v = {
        "python": "3",
        "torch": "1",
        "node": "v20",
        "mur": "0",
        "optuna": "3.1.0",
        "server_backend": "native",
        "cpus": 2,
        "memory_gib": 1.0,
        "machine": "x",
    }
    return {
        "versions": v,
        "config": cfg,
        "quick": True,
        "wall_seconds": 60.0,
        "tasks": {
            "convex": {"cells": toy_cells, "seconds": 1.0, "steps_per_epoch": None},
            "mlp": {"cells": img_cells, "seconds": 1.0, "steps_per_epoch": 16},
        },
    }


def test_generated_report_is_clean_and_has_the_verdict_table(tmp_path):
    res = _fake_results()
    an = report.analyse(res)
    text = report.write(res, an, ["accuracy_mlp.png"], tmp_path)
    assert report.prose_problems(text) == []
    assert "| claim | rule | evidence | verdict |" in text and "![accuracy_mlp.png](accuracy_mlp.png)" in text
    assert len(an["claims"]) == 2 * len(report.CLAIMS)
    # the toy cell: multiplicative 10x and hybrid 100x closer than additive -> better; diverged trials counted apart
    s = an["cells"]["convex"]["sgd"]
    lo, hi = 10**-2.0, 10**-0.5  # the two random trials that did not diverge (scores 2 and 0.5)
    assert s["additive"]["random"] == {
        "n": 3,
        "diverged": 1,
        "errors": 0,
        "share": pytest.approx(1 / 3),
        "median": pytest.approx((lo + hi) / 2),
        "q1": pytest.approx(lo + (hi - lo) / 4),
        "q3": pytest.approx(lo + 3 * (hi - lo) / 4),
    }
    assert [an["claims"][i]["verdict"] for i in (2, 3)] == [claims.OPEN] * 2  # 2 cells: too few for a verdict
    assert "1 diverged" in text and "1e6" not in text


@pytest.mark.skipif(not (RESULTS / "REPORT.md").exists(), reason="no committed report")
def test_committed_report_prose():
    assert report.prose_problems((RESULTS / "REPORT.md").read_text()) == []


def test_steps_to_target():
    assert images.steps_to([[0, 0.1], [10, 0.81], [20, 0.9]], 0.8) == 10
    assert images.steps_to([[0, 0.1], [10, 0.5]], 0.8) is None


def test_resnet_shapes():
    net = images.resnet(8)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) >= 9  # deeper than the 2-conv CNN


def test_idx_reader(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2, 3, 4) + data.tobytes()
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx(p), data)


def test_random_trial_is_reproducible():
    a = spaces.suggest(spaces.RandomTrial(random.Random(5)), "hybrid", (1e-4, 1.0))
    b = spaces.suggest(spaces.RandomTrial(random.Random(5)), "hybrid", (1e-4, 1.0))
    assert a == b
