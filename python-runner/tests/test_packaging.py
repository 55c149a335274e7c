"""A non-editable install of the `mur` distribution, as a user gets it from
`pip install ./python-runner`: server="auto" finds the server through PATH
(`mur-server`, what `npm install -g ./ts-server` installs), and says how to
install it when nothing is found."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mur
from mur import server as mur_server

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
NODE = shutil.which("node")

# Run inside the installed venv: one SGD step through server="auto", printing
# where mur came from and which server CLI it picked.
STEP = textwrap.dedent("""
    import torch, mur, mur.server
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = mur.RemoteOptimizer([p], optimizer="sgd", rule="additive", lr=0.5, server="auto", transport="grpc")
    try:
        p.grad = torch.tensor([1.0, 1.0])
        opt.step()
        print(mur.__file__)
        print(mur.server.find_server_cli())
        print(p.tolist())
    finally:
        opt.close()
""")


def _clean_env(path_dirs):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "MUR_SERVER", "MUR_SERVER_CLI", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv (system site-packages: torch, grpcio, protobuf, numpy from
    Debian) with `mur` pip-installed from a copy of python-runner, not -e."""
    if not (ROOT / "python-runner" / "mur" / "_proto" / "__init__.py").exists():
        pytest.fail("python-runner/mur/_proto is missing: run make proto")
    base = tmp_path_factory.mktemp("pkg")
    # A copy, so that the build's egg-info and build/ never land in the checkout
    # and the installed package has no repository around it.
    src = base / "src"
    shutil.copytree(ROOT / "python-runner" / "mur", src / "mur", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "python-runner" / "pyproject.toml", src / "pyproject.toml")
    venv = base / "venv"
    # Debian's python3 (its torch and grpcio): the one this venv's base is.
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run(
        [base_python, "-m", "venv", "--system-site-packages", str(venv)],
        check=True,
        env=_clean_env([Path(base_python).parent]),
        capture_output=True,
    )
    py = venv / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        env=_clean_env([venv / "bin", Path(base_python).parent]),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    shutil.rmtree(src)
    yield py


def test_auto_finds_mur_server_on_path(installed, tmp_path):
    if NODE is None or not CLI.exists():
        pytest.fail(f"needs node and the built server ({CLI}): make build")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mur-server").symlink_to(CLI)  # as npm install -g links its bin
    r = subprocess.run(
        [str(installed), "-c", STEP],
        env=_clean_env([bin_dir, Path(NODE).parent]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    origin, cli, values = r.stdout.strip().splitlines()
    venv = installed.parent.parent
    assert Path(origin).is_relative_to(venv), f"mur imported from {origin}, not the installed copy"
    assert Path(cli) == bin_dir / "mur-server"
    assert json.loads(values) == [0.5, -2.5]  # p - lr * grad, computed by the server


def test_nothing_found_says_how_to_install(installed, tmp_path):
    r = subprocess.run(
        [str(installed), "-c", STEP],
        env=_clean_env([Path(NODE or "/usr/bin/node").parent]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "RuntimeError: server='auto': no mur server found" in r.stderr, r.stderr
    assert "npm install -g ./ts-server" in r.stderr and "MUR_SERVER" in r.stderr


def test_mur_server_naming_a_missing_file_is_refused(monkeypatch, tmp_path):
    missing = tmp_path / "nope" / "cli.js"
    monkeypatch.setenv("MUR_SERVER", str(missing))
    with pytest.raises(RuntimeError, match=r"MUR_SERVER='.*nope/cli\.js' is not a file"):
        mur.RemoteOptimizer([torch.nn.Parameter(torch.zeros(1))], server="auto")


def test_lookup_order(monkeypatch, tmp_path):
    """MUR_SERVER first, then mur-server on PATH, then this checkout's build."""
    fake = tmp_path / "cli.js"
    fake.write_text("")
    fake.chmod(0o755)  # which() finds executables only (npm marks its bins so)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mur-server").symlink_to(fake)
    monkeypatch.delenv("MUR_SERVER_CLI", raising=False)
    monkeypatch.setenv("MUR_SERVER", str(fake))
    monkeypatch.setenv("PATH", str(bin_dir))
    assert mur_server.find_server_cli() == fake
    monkeypatch.delenv("MUR_SERVER")
    assert mur_server.find_server_cli() == bin_dir / "mur-server"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert mur_server.find_server_cli() == CLI


def test_validate_without_the_lab_says_how_to_get_it(installed, tmp_path):
    """`mur` alone: python -m mur.validate stays the entry point and names the missing lab."""
    env = _clean_env([Path(NODE or "/usr/bin/node").parent])
    r = subprocess.run(
        [str(installed), "-m", "mur.validate", "--quick"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "mur.validate needs the lab package: pip install ./python-runner/lab (mur-lab)" in r.stderr, r.stderr
