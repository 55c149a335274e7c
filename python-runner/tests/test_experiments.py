"""The experiment code itself, on tiny sizes (no server needed)."""
import gzip
import math
import random
import struct

import numpy as np
import pytest

from mur.data import read_idx
from mur.experiments import images, toy


def test_problems_start_where_documented():
    assert toy.distance("rosenbrock", toy.PROBLEMS["rosenbrock"]["start"]) == pytest.approx(2.0616, abs=1e-4)
    assert toy.distance("convex", toy.PROBLEMS["convex"]["start"]) == pytest.approx(69.26, abs=1e-9)
    for p in toy.PROBLEMS.values():
        assert float(p["f"](list(p["minimum"]))) == 0.0


def test_grids_have_the_documented_sizes_and_keys():
    assert [len(toy.grid(r)) for r in toy.RULES] == [9, 15, 60]
    assert [len(toy.grid(r, quick=True)) for r in toy.RULES] == [5, 5, 10]
    assert set(toy.grid("hybrid")[0]) == {"lr", "lr_in", "lr_out", "gamma"}


def test_random_configurations_stay_in_their_ranges():
    rng = random.Random(0)
    for _ in range(200):
        h = toy.random_config("hybrid", rng)
        assert 1e-4 <= h["lr"] <= 1 and 0.1 <= h["lr_in"] <= 10 and 1e-3 <= h["lr_out"] <= 0.5 and 0.5 <= h["gamma"] <= 1


def test_distance_of_a_diverged_point_is_infinite():
    assert toy.distance("convex", (math.inf, math.inf)) == math.inf


def test_epochs_to_target():
    assert images.epochs_to([0.5, 0.8, 0.9], 0.8) == 2
    assert images.epochs_to([0.5, 0.6], 0.8) is None


def test_hypers_per_rule():
    assert images.hypers("sgd", "additive") == {"lr": 0.05, "momentum": 0.9}
    assert images.hypers("adam", "hybrid")["lr_out"] == pytest.approx(1e-3 * images.OUT_SCALE)
    assert images.hypers("adam", "multiplicative", scale_out=False)["lr_out"] == 1e-3


def test_idx_reader(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2, 3, 4) + data.tobytes()
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx(p), data)
