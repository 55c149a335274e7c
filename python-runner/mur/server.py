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


INSTALL_HINT = (
    "install the server with `npm install -g ./ts-server` (from a built mur checkout: make build) "
    "so that `mur-server` is on PATH, or set MUR_SERVER to the path of its cli.js"
)


def _checkout_cli() -> Path:
    # python-runner/mur/server.py -> repository root; only meaningful when mur
    # is imported from a checkout (editable install or PYTHONPATH), not from
    # site-packages, where parents[2] is some unrelated directory.
    return Path(__file__).resolve().parents[2] / "ts-server" / "dist" / "src" / "cli.js"


def find_server_cli() -> Path:
    """The server CLI that ``server="auto"`` starts, looked up in order:
    MUR_SERVER (or its older name MUR_SERVER_CLI), ``mur-server`` on PATH
    (what `npm install -g ./ts-server` installs), then the built server of the
    checkout this package was imported from. Raises RuntimeError saying how to
    install the server when none is found."""
    for var in ("MUR_SERVER", "MUR_SERVER_CLI"):
        env = os.environ.get(var)
        if env:
            path = Path(env)
            if not path.is_file():
                raise RuntimeError(
                    f"{var}={env!r} is not a file; it must name the server's cli.js "
                    f"(or a mur-server command); else unset it and {INSTALL_HINT}"
                )
            return path
    on_path = shutil.which("mur-server")
    if on_path:
        return Path(on_path)
    checkout = _checkout_cli()
    if checkout.is_file():
        return checkout
    raise RuntimeError(
        f"server='auto': no mur server found (MUR_SERVER unset, no mur-server on PATH, "
        f"no built checkout at {checkout}); {INSTALL_HINT}"
    )


def terminate(proc, grace=15.0):
    """Stops a server process: SIGTERM (a graceful shutdown), SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        cli = find_server_cli()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("server='auto' needs Node.js (node) on PATH")
        backend = backend or os.environ.get("MUR_SERVER_BACKEND")
        try:
            self._dir = _private_dir()
            self.socket = os.path.join(self._dir, "mur.sock")
            # Through node rather than executed: a symlink to cli.js (npm's bin)
            # works either way, and cli.js needs no execute bit.
            # --remove-socket-dir: the server removes this directory when it exits,
            # so a client killed with SIGKILL leaves nothing in /tmp either.
            cmd = [node, str(cli), "--socket", self.socket, "--exit-with-stdin", "--remove-socket-dir", *extra_args]
            if backend:
                cmd += ["--backend", backend]
            self._log = tempfile.TemporaryFile(mode="w+")  # its JSON logs
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True
            )
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
            terminate(proc)
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
