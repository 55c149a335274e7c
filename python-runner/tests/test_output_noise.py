"""What a user sees in the output: the server prints no tfjs "install our
node backend" banner on any engine, and npm (through scripts/npm-quiet.sh,
which make and test-all.sh use) no `nodedir` warning."""

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import torch

import mur
from mur._proto.mur.v1 import optimizer_pb2 as pb
from mur._proto.mur.v1 import optimizer_pb2_grpc as pbg

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
BANNER = ("looks like you are running TensorFlow.js", "install our node backend", "Hi there")


def _installed_backends(address):
    with grpc.insecure_channel(address) as ch:
        return list(pbg.OptimizerStub(ch).GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30).available_backends)


def _first_line(proc, timeout=60):
    buf, deadline = b"", time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, "the server did not say where it listens"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            part = os.read(proc.stdout.fileno(), 65536)
            assert part, f"the server exited with {proc.wait()}"
            buf += part
    return buf


def test_no_tfjs_banner_on_any_backend(server):
    backends = _installed_backends(server)
    assert "cpu" in backends  # the engine that printed it: the test must cover it
    for backend in backends:
        d = tempfile.mkdtemp(prefix="mur-")
        sock = os.path.join(d, "s.sock")
        env = {**os.environ, "MUR_LOG": "info"}
        proc = subprocess.Popen(
            ["node", str(CLI), "--socket", sock, "--backend", backend],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            head = _first_line(proc)
            assert json.loads(head.split(b"\n")[0])["backend"] == backend
            # The banner came with the first tensor the cpu engine wrote: a session and a step.
            p = torch.nn.Parameter(torch.ones(4))
            opt = mur.RemoteOptimizer([p], optimizer="adam", rule="hybrid", server=f"unix:{sock}", transport="grpc")
            try:
                p.grad = torch.ones(4)
                opt.step()
                assert not torch.equal(p.detach(), torch.ones(4))
                opt.state_dict()
            finally:
                opt.close()
            proc.terminate()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            shutil.rmtree(d, ignore_errors=True)
        text = (head + out + err).decode(errors="replace")
        assert '"event":"stopped"' in text  # the whole output was read
        for words in BANNER:
            assert words.lower() not in text.lower(), f"backend {backend} printed the tfjs banner:\n{text}"


def _stand_in_npm(bin_dir, exit_code):
    """An `npm` on PATH that writes what npm >= 11 writes when ~/.npmrc sets
    `nodedir` (the line the wrapper drops), plus lines it must keep."""
    npm = bin_dir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        'echo "out: $*"\n'
        "echo 'npm warn Unknown user config \"nodedir\". This will stop working in the next major version of npm.' >&2\n"
        "echo 'npm warn some other warning' >&2\n"
        "echo 'npm error the error text' >&2\n"
        f"exit {exit_code}\n"
    )
    npm.chmod(0o755)


@pytest.mark.parametrize("exit_code", [0, 3])
def test_npm_quiet_drops_only_the_nodedir_warning(tmp_path, exit_code):
    # The wrapper's own behaviour, against a stand-in: whether a given npm
    # prints the warning is npm's business, not something this project asserts.
    _stand_in_npm(tmp_path, exit_code)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    quiet = subprocess.run(
        [str(ROOT / "scripts" / "npm-quiet.sh"), "run", "x y"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert quiet.returncode == exit_code  # npm's exit status passes through
    assert quiet.stdout == "out: run x y\n"  # stdout untouched, arguments passed as given
    assert "nodedir" not in quiet.stderr
    assert quiet.stderr == "npm warn some other warning\nnpm error the error text\n"  # the rest kept, in order
