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
        # torch's Adafactor and Muon: the torch 2.x venv's (a subprocess) when this torch lacks them.
        "adafactor": 6 if fw.has("torch", "adafactor") else 5,
        "muon": 7 if fw.has("torch", "muon") else 6,
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
    # Adafactor: optax and keras configured to torch's algorithm agree with mur at eps1=0; their
    # eps1 (added to g^2) makes a real gap at eps1 = 1e-3.
    for f in ("optax", "keras"):
        r = pairs[("adafactor", f, f"mur~{f}")] if f == "keras" else pairs[("adafactor", "optax", "mur~optax")]
        assert r["differences"] == ["eps1_added_to_g2"] and r["rel"] > 10 * fw.TOLERANCE >= 10 * r["rel_ablated"], r
    assert pairs[("adafactor", "optax", "keras")]["differences"] == [] and pairs[("adafactor", "optax", "keras")]["ok"]
    # Muon + AdamW: mur's per-group sessions through each client; optax's Nesterov and keras's
    # AdamW (eps, decay at Muon's rate) differ, gone in the ablated run; mur+keras bridges keras.
    assert pairs[("muon", "mur~optax", "mur~keras")]["rel"] <= fw.TOLERANCE
    r = pairs[("muon", "optax", "mur~optax")]
    assert r["differences"] == ["nesterov_bias_corrected"] and r["rel"] > 10 * fw.TOLERANCE, r
    r = pairs[("muon", "keras", "mur+keras")]
    assert r["differences"] == [] and r["rel"] <= fw.TOLERANCE, r
    assert pairs[("muon", "keras", "mur~keras")]["rel"] > 10 * fw.TOLERANCE
    if fw.has("torch", "muon"):
        assert md.count("run (torch 2.") == 2, md  # the Adafactor and Muon rows
        r = pairs[("adafactor", "torch", "mur~torch")]
        assert r["differences"] == [] and r["rel"] <= fw.TOLERANCE, r
        # torch's Newton-Schulz in bfloat16: a real gap, closed by its own code in float32.
        r = pairs[("muon", "torch", "mur~torch")]
        assert r["differences"] == ["newton_schulz_in_bfloat16"] and r["rel"] > 10 * fw.TOLERANCE, r
        assert r["rel_ablated"] <= fw.TOLERANCE
    else:
        assert "n/a (torch.optim.Muon needs torch >= 2.9" in md


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


@needs_jax
def test_without_a_torch_2_venv_the_torch_run_is_na_and_says_why(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH2_PY", str(tmp_path / "no-such-python"))
    code = fw.main(
        [
            "--frameworks",
            "torch,optax",
            "--optimizers",
            "adafactor",
            "--quick",
            "--server",
            server,
            "--out",
            str(tmp_path),
        ]
    )
    md = capsys.readouterr().out
    report = json.loads((tmp_path / "frameworks.json").read_text())
    import torch

    if hasattr(torch.optim, "Adafactor"):  # this torch has it: no subprocess
        assert "torch" in report["matrix"]["adafactor"]["runs"]
    else:
        assert code == 0, md
        assert report["matrix"]["adafactor"]["runs"] == ["mur~torch", "optax", "mur~optax"]
        assert "n/a (torch.optim.Adafactor needs torch >= 2.5" in md and "no-such-python is missing" in md


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
    # torch's bfloat16 Newton-Schulz is torch's alone: mur follows torch's maths otherwise.
    assert fw.differences("torch", "mur~torch", "muon") == ["newton_schulz_in_bfloat16"]
    assert fw.differences("mur~torch", "mur~keras", "muon") == []
    assert fw.differences("keras", "mur+keras", "muon") == []
    muon, adam = fw._muon_hypers(fw.CONFIGS["muon"], "keras")
    assert adam["eps_before_correction"] is True and adam["weight_decay"] == pytest.approx(0.01 * 0.02 / 3e-3)
    assert fw.ablated("muon", fw.CONFIGS["muon"]) == {
        **fw.CONFIGS["muon"],
        "nesterov": False,
        "eps": 0.0,
        "adam_weight_decay": 0.0,
        "torch_ns": "float32",
    }
    assert not fw.has("torch", "lamb") and fw.has("keras", "lamb") and not fw.has("keras", "lars")
    assert fw.differences("keras", "mur~keras", "lamb") == ["decay_outside_trust_ratio"]
    assert fw.bridges("keras", "lamb") == {}  # mur has no flag for it: no mur+keras run
    assert fw.ablated("schedule_free_adamw", fw.CONFIGS["schedule_free_adamw"])["warmup_steps"] == 0
    assert "schedule" not in fw.ablated("lars", fw.CONFIGS["lars"])


def test_bad_arguments_exit_2_naming_the_value(tmp_path, capsys):
    for argv, bad in (
        (["--frameworks", "torch,tf"], "'tf'"),
        (["--frameworks", "torch", "--optimizers", "lion"], "'lion'"),
        (["--frameworks", "torch", "--steps", "0"], "0"),
    ):
        with pytest.raises(SystemExit) as e:
            fw.main(argv + ["--out", str(tmp_path)])
        assert e.value.code == 2 and bad in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written
