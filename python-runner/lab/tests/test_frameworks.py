"""The cross-framework matrix (python -m mur.validate --frameworks), quick size, against a real server."""

import json
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
from mur_lab import frameworks as fw

missing = [fw.available(f) for f in ("optax", "keras")]
needs_jax = pytest.mark.skipif(
    any(missing), reason=f"optax/keras unavailable here ({'; '.join(filter(None, missing))}); make jax builds .venv-jax"
)


@pytest.fixture(scope="module")
def server():
    import mur

    with mur.LocalServer() as s:
        yield s.address


@needs_jax
def test_quick_matrix_passes_and_writes_its_reports(server, tmp_path, capsys):
    code = fw.main(["--frameworks", "torch,optax,keras", "--quick", "--server", server, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "frameworks.json").read_text())
    assert set(report["matrix"]) == set(fw.OPTIMIZERS)
    assert (tmp_path / "frameworks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "frameworks.md").read_text()
    for name in fw.DIFFERENCES:
        assert name in md
    pairs = {(r["optimizer"], r["a"], r["b"]): r for r in report["pairs"]}
    # 6 runs per optimizer, plus mur+F for each framework that differs from torch there;
    # no run for a framework without the optimizer (torch: lamb, lars, schedule_free_adamw;
    # keras: lars), while mur~F still runs through its client.
    n_runs = {
        "adam": 7,
        "adamw": 7,
        "sgd_momentum": 7,
        "rmsprop": 8,
        "adagrad": 8,
        "lamb": 5,
        "lars": 4,
        "schedule_free_adamw": 5,
    }
    assert {o: len(e["runs"]) for o, e in report["matrix"].items()} == n_runs
    assert len(pairs) == sum(n * (n - 1) // 2 for n in n_runs.values()) and all(r["ok"] for r in pairs.values())
    assert "torch" not in report["matrix"]["lamb"]["runs"] and "mur~torch" in report["matrix"]["lamb"]["runs"]
    assert not {"torch", "keras"} & set(report["matrix"]["lars"]["runs"])
    assert "n/a (keras.optimizers has no LARS)" in md
    # mur follows optax's LAMB, LARS (under a schedule) and Schedule-Free AdamW.
    for opt in ("lamb", "lars", "schedule_free_adamw"):
        for b in ("mur~torch", "mur~optax", "mur~keras"):
            r = pairs.get((opt, "optax", b)) or pairs[(opt, b, "optax")]  # runs in order: mur~torch first
            assert r["differences"] == [] and r["ok"], r
    # keras's LAMB decays outside the trust ratio, its Schedule-Free warms up and
    # averages otherwise: real gaps, gone at weight_decay=0 and warmup_steps=0.
    for opt, name in (("lamb", "decay_outside_trust_ratio"), ("schedule_free_adamw", "uniform_average_warmup_at_t")):
        r = pairs[(opt, "optax", "keras")]
        assert r["differences"] == [name] and r["rel"] > 10 * fw.TOLERANCE >= 10 * r["rel_ablated"], r
    # Measured, not just claimed: keras's Adam and optax's RMSprop differ from
    # torch by a real gap that closes at eps = 0; mur matches every framework
    # where the semantics are the same.
    keras_adam = pairs[("adam", "torch", "keras")]
    assert keras_adam["differences"] == ["eps_before_bias_correction"]
    assert keras_adam["rel"] > 10 * fw.TOLERANCE >= 10 * keras_adam["rel_ablated"]
    optax_rms = pairs[("rmsprop", "torch", "optax")]
    assert optax_rms["differences"] == ["eps_inside_sqrt"] and optax_rms["rel"] > 10 * fw.TOLERANCE
    for f in ("torch", "optax"):
        assert pairs[("sgd_momentum", f, f"mur~{f}")]["rel"] <= fw.TOLERANCE
    assert pairs[("adam", "optax", "mur~optax")]["rel"] <= fw.TOLERANCE
    # The bridges: each framework's own optimizer and mur with the flag agree,
    # while mur without it keeps the gap; the rows still name the difference.
    for opt, f, name in (
        ("adam", "keras", "eps_before_bias_correction"),
        ("adamw", "keras", "eps_before_bias_correction"),
        ("rmsprop", "optax", "eps_inside_sqrt"),
        ("rmsprop", "keras", "eps_inside_sqrt"),
        ("adagrad", "optax", "eps_inside_sqrt"),
        ("adagrad", "keras", "eps_inside_sqrt"),
        ("sgd_momentum", "keras", "velocity_includes_lr"),
    ):
        same, plain = pairs[(opt, f, f"mur+{f}")], pairs[(opt, f, f"mur~{f}")]
        assert same["rel"] <= fw.TOLERANCE and same["bridged"] == [name] and name in same["why"], same
        assert plain["rel"] > 10 * fw.TOLERANCE and plain["differences"] == [name], plain
    # lr_in_momentum under the schedule: Keras's SGD differs from torch's by far
    # more than rounding, and the gap closes at a constant lr.
    keras_sgd = pairs[("sgd_momentum", "torch", "keras")]
    assert keras_sgd["ablation"] == "constant lr"
    assert keras_sgd["rel"] > 10 * fw.TOLERANCE >= 10 * keras_sgd["rel_ablated"]


@needs_jax
def test_a_wrong_semantics_table_fails(server, tmp_path, monkeypatch, capsys):
    """Drop the eps-inside-sqrt entry: optax's RMSprop then "should" agree with torch, and does not."""
    monkeypatch.setitem(fw.DIFFERENCES, "eps_inside_sqrt", {**fw.DIFFERENCES["eps_inside_sqrt"], "where": set()})
    code = fw.main(
        [
            "--frameworks",
            "torch,optax",
            "--optimizers",
            "rmsprop",
            "--quick",
            "--server",
            server,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "FAIL rmsprop torch vs optax" in capsys.readouterr().out


@needs_jax
def test_a_claimed_difference_that_does_not_show_fails(server, tmp_path, monkeypatch, capsys):
    """Claim that torch's SGD differs from optax's by eps placement: no gap appears, which fails."""
    monkeypatch.setitem(
        fw.DIFFERENCES, "eps_inside_sqrt", {**fw.DIFFERENCES["eps_inside_sqrt"], "where": {("optax", "sgd_momentum")}}
    )
    code = fw.main(
        [
            "--frameworks",
            "torch,optax",
            "--optimizers",
            "sgd_momentum",
            "--quick",
            "--server",
            server,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "NOT MEASURED" in capsys.readouterr().out


def test_differences_of_runs():
    assert fw.differences("keras", "mur~torch", "adam") == ["eps_before_bias_correction"]
    assert fw.differences("mur~keras", "torch", "adam") == []  # mur has torch's semantics
    assert fw.differences("optax", "keras", "rmsprop") == []
    assert fw.differences("optax", "torch", "adagrad") == ["eps_inside_sqrt"]
    assert fw.differences("keras", "mur+keras", "adam") == []  # mur+F has F's semantics
    assert fw.differences("mur+keras", "torch", "sgd_momentum") == ["velocity_includes_lr"]
    assert fw.bridged("keras", "mur+keras", "adam") == ["eps_before_bias_correction"]
    assert fw._mur_hypers("rmsprop", fw.CONFIGS["rmsprop"], "optax")[1]["eps_in_sqrt"] is True
    assert "eps_in_sqrt" not in fw._mur_hypers("rmsprop", fw.CONFIGS["rmsprop"])[1]
    assert not fw.has("torch", "lamb") and fw.has("keras", "lamb") and not fw.has("keras", "lars")
    assert fw.differences("keras", "mur~keras", "lamb") == ["decay_outside_trust_ratio"]
    assert fw.bridges("keras", "lamb") == {}  # mur has no flag for it: no mur+keras run
    assert fw.ablated("schedule_free_adamw", fw.CONFIGS["schedule_free_adamw"])["warmup_steps"] == 0
    assert "schedule" not in fw.ablated("lars", fw.CONFIGS["lars"])


def test_bad_arguments_exit_2_naming_the_value(tmp_path, capsys):
    for argv, bad in (
        (["--frameworks", "torch,tf"], "'tf'"),
        (["--frameworks", "torch", "--optimizers", "muon"], "'muon'"),
        (["--frameworks", "torch", "--steps", "0"], "0"),
    ):
        with pytest.raises(SystemExit) as e:
            fw.main(argv + ["--out", str(tmp_path)])
        assert e.value.code == 2 and bad in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written
