"""The demo at a small size, run as a user's `make demo` is but with its
output captured (not a terminal): the three contenders side by side, the
table, the PNG, and no progress-bar carriage returns."""

import re
import subprocess
import sys


def test_demo_side_by_side(tmp_path):
    png = tmp_path / "curves.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mur_lab.demo",
            "--train-size",
            "3000",
            "--epochs",
            "1",
            "--evals",
            "2",
            "--out",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "\r" not in out  # tqdm stays off when the output is not a terminal
    assert "hybrid at its defaults: gamma 0.9, lr_in 1, lr_out 10 x lr = 0.01" in r.stdout
    rows = dict(
        re.findall(
            r"^(torch\.optim\.Adam|mur adam additive|mur adam hybrid)\s+([\d.]+)\s+[\d.]+\s+[\d.]+$", r.stdout, re.M
        )
    )
    assert set(rows) == {"torch.optim.Adam", "mur adam additive", "mur adam hybrid"}, r.stdout
    acc = {k: float(v) for k, v in rows.items()}
    assert all(a > 40 for a in acc.values()), acc  # trained: chance is 10 %
    # Additive Adam through the server is torch's Adam: same init, same batches, same accuracy to rounding.
    assert abs(acc["torch.optim.Adam"] - acc["mur adam additive"]) < 1.0, acc
    assert f"curves: {png}" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_bad_size():
    r = subprocess.run(
        [sys.executable, "-m", "mur_lab.demo", "--epochs", "0"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "--epochs=0: must be at least 1" in r.stderr
