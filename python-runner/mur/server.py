"""Start and stop a local mur server (``server="auto"``)."""
import atexit
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def _cli_path() -> Path:
    env = os.environ.get("MUR_SERVER_CLI")
    if env:
        return Path(env)
    # python-runner/mur/server.py -> repository root
    return Path(__file__).resolve().parents[2] / "ts-server" / "dist" / "src" / "cli.js"


class LocalServer:
    """A mur server in a child process on a free port of 127.0.0.1.

    ``backend`` (or the environment variable MUR_SERVER_BACKEND) picks the
    tensor backend; by default the server chooses (native tensorflow when it
    loads, else wasm).
    """

    def __init__(self, backend=None, extra_args=()):
        node = shutil.which("node")
        cli = _cli_path()
        if node is None:
            raise RuntimeError("server='auto' needs Node.js (node) on PATH")
        if not cli.exists():
            raise RuntimeError(f"server='auto': {cli} not found; build the server first (make build)")
        backend = backend or os.environ.get("MUR_SERVER_BACKEND")
        cmd = [node, str(cli), "--port", "0", "--host", "127.0.0.1", *extra_args]
        if backend:
            cmd += ["--backend", backend]
        self._log = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # its JSON logs go to a temp file
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        line = self.proc.stdout.readline()  # the server's first line says where it listens
        if not line:
            self.proc.wait()
            self._log.seek(0)
            raise RuntimeError(f"the mur server exited with {self.proc.returncode}: {self._log.read()[-2000:]}")
        info = json.loads(line)
        self.port = info["port"]
        self.backend = info["backend"]
        self.address = f"127.0.0.1:{self.port}"
        atexit.register(self.stop)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        atexit.unregister(self.stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
