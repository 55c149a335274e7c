"""Start and stop a local mur server (``server="auto"``)."""
import atexit
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


def _cli_path() -> Path:
    env = os.environ.get("MUR_SERVER_CLI")
    if env:
        return Path(env)
    # python-runner/mur/server.py -> repository root
    return Path(__file__).resolve().parents[2] / "ts-server" / "dist" / "src" / "cli.js"


def _private_dir() -> str:
    """A fresh directory only this user can enter (mkdtemp: mode 0700), short
    enough for a Unix socket path inside it."""
    d = tempfile.mkdtemp(prefix="mur-")
    if len(os.path.join(d, "mur.sock").encode()) > _SUN_PATH_MAX:
        os.rmdir(d)
        d = tempfile.mkdtemp(prefix="mur-", dir="/tmp")
    return d


class LocalServer:
    """A mur server in a child process, listening on a Unix domain socket in a
    private temporary directory (``address`` is ``"unix:/tmp/mur-.../mur.sock"``).

    The server is started with ``--exit-with-stdin`` and its stdin is a pipe
    this object keeps open: when this process ends, however it ends (even
    SIGKILL), the pipe closes and the server shuts down by itself. It runs in
    its own session, so a Ctrl-C in the terminal reaches only the client,
    which can still talk to it (e.g. save a checkpoint) before exiting.

    ``backend`` (or the environment variable MUR_SERVER_BACKEND) picks the
    tensor backend; by default the server chooses (native when its addon
    loads, else tensorflow, else wasm).
    """

    def __init__(self, backend=None, extra_args=(), startup_timeout=60.0):
        self.proc = None
        self._log = None
        self._dir = None
        node = shutil.which("node")
        cli = _cli_path()
        if node is None:
            raise RuntimeError("server='auto' needs Node.js (node) on PATH")
        if not cli.exists():
            raise RuntimeError(f"server='auto': {cli} not found; build the server first (make build)")
        backend = backend or os.environ.get("MUR_SERVER_BACKEND")
        try:
            self._dir = _private_dir()
            self.socket = os.path.join(self._dir, "mur.sock")
            cmd = [node, str(cli), "--socket", self.socket, "--exit-with-stdin", *extra_args]
            if backend:
                cmd += ["--backend", backend]
            self._log = tempfile.TemporaryFile(mode="w+")  # its JSON logs
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                         env=env, start_new_session=True)
            info = json.loads(self._first_line(startup_timeout))  # where it listens
        except BaseException:
            self.stop()
            raise
        self.port = info.get("port", 0)
        self.backend = info["backend"]
        self.address = f"unix:{self.socket}"
        self._owner = os.getpid()
        atexit.register(self._stop_at_exit)

    def _stop_at_exit(self):
        # Only the process that started it: a fork()ed child (a DataLoader
        # worker) exiting must not stop its parent's server.
        if os.getpid() == self._owner:
            self.stop()

    def _first_line(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the mur server did not start within {timeout:g} s: {self._log_tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            part = os.read(fd, 65536)
            if not part:  # it exited before saying where it listens
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                raise RuntimeError(f"the mur server exited with {self.proc.returncode}: {self._log_tail()}")
            buf += part
        return buf.split(b"\n", 1)[0].decode()

    def _log_tail(self):
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-2000:]

    def stop(self):
        """Stops the server (SIGTERM, then SIGKILL after 15 s) and removes its directory."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    if f:
                        f.close()
                except OSError:
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self._stop_at_exit)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
