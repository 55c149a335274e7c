"""Generated code is what its generator writes: the native tanh's coefficients
(ts-server/native/src/tanh-coefficients.h) against a fresh run of
scripts/fit-tanh.py, so that an edit by hand, or a change to the fit without
running it again, fails here."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("clang-format") is None, reason="clang-format (make apt) lays the header out")
def test_tanh_coefficients_are_the_fit(tmp_path):
    pytest.importorskip("numpy")
    out = tmp_path / "tanh-coefficients.h"
    subprocess.run([sys.executable, str(ROOT / "scripts/fit-tanh.py"), str(out)], check=True, timeout=120)
    committed = (ROOT / "ts-server/native/src/tanh-coefficients.h").read_text()
    assert out.read_text() == committed, "tanh-coefficients.h is not what scripts/fit-tanh.py writes: run it again"
