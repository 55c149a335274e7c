"""The same-host data plane: the client side of a session's shared-memory arena.

The server answers ``OpenArena`` with an ``ArenaInfo``: a memfd of the server
process reachable as ``/proc/<server pid>/fd/<n>``, its size, a 32-byte random
token at offset 0 and, per parameter, a float32 parameter region (the server's
live copy) and a float32 gradient region. ``Arena.open(info)`` maps it
read-write (MAP_SHARED), closes its descriptor at once, checks the token and
the magic, and exposes one flat float32 torch view per region.

Any failure raises ``TransportUnavailable`` with the reason; it means "use the
gRPC transport". Nothing here creates a file: the memory belongs to the
server's memfd and the kernel frees it when the last mapping goes away.
"""
import ctypes
import mmap
import os
import stat
import sys
import time

import torch

from .errors import TransportUnavailable

TOKEN_BYTES = 32
MAGIC = b"MUR-ARENA-V1"  # at [32, 48), NUL-padded (ts-server/src/transport/arena.ts)
MAGIC_AT = 32
HEADER_BYTES = 48  # the bytes read before trusting anything else
_F32 = 4


def _layout_error(msg):
    return TransportUnavailable(f"bad arena layout from the server: {msg}")


class Arena:
    """A mapped arena. ``param(i)`` / ``grad(i)``: flat float32 views of
    tensor ``i`` (``ArenaInfo.tensors[i]``); ``index``: param_id -> i."""

    def __init__(self, mm, info):
        self._mm = mm
        self.path = info.path
        self.bytes = int(info.bytes)
        self.token = bytes(info.token)
        self.param_ids = [t.param_id for t in info.tensors]
        self.index = {pid: i for i, pid in enumerate(self.param_ids)}
        self._params = [self._view(int(t.param_offset), int(t.elements)) for t in info.tensors]
        self._grads = [self._view(int(t.grad_offset), int(t.elements)) for t in info.tensors]
        self.lane = Lane(mm) if sys.platform == "linux" and os.uname().machine == "x86_64" else None

    def _view(self, offset, n):
        if n == 0:  # frombuffer refuses empty views; nothing to share anyway
            return torch.empty(0, dtype=torch.float32)
        return torch.frombuffer(self._mm, dtype=torch.float32, count=n, offset=offset)

    # -- opening ----------------------------------------------------------
    @classmethod
    def open(cls, info) -> "Arena":
        """Maps ``info`` (an ``ArenaInfo``); raises TransportUnavailable(reason)."""
        path, size, token = info.path, int(info.bytes), bytes(info.token)
        cls._check_layout(info, size, token)
        # The path is a magic link to the server's memfd. Look before opening:
        # anything but a regular file (a device, a FIFO: what that fd number
        # is in some other process of *this* host) is not an arena.
        try:
            st = os.stat(path)
        except OSError as e:
            raise TransportUnavailable(f"cannot open the arena {path}: {e.strerror} (errno {e.errno})") from None
        if not stat.S_ISREG(st.st_mode):
            raise TransportUnavailable(f"{path} is not the server's arena (not a regular file): "
                                       "the server is on another host or in another pid namespace")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise TransportUnavailable(f"cannot open the arena {path}: {e.strerror} (errno {e.errno})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < size:
                # Mapping past the end of the file would SIGBUS on first touch.
                raise TransportUnavailable(
                    f"{path} is {st.st_size} bytes, the server's arena is {size}: not the server's arena "
                    "(another host or pid namespace)")
            try:
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except (OSError, ValueError) as e:
                raise TransportUnavailable(f"cannot map the arena {path} ({size} bytes): {e}") from None
        finally:
            os.close(fd)  # the mapping keeps the memory; no descriptor is held
        try:
            if mm[:TOKEN_BYTES] != token:
                raise TransportUnavailable(
                    f"{path} is not this server's arena (token mismatch): the server is on another host "
                    "or in another pid namespace")
            magic = mm[MAGIC_AT:HEADER_BYTES].rstrip(b"\0")
            if magic != MAGIC:
                raise TransportUnavailable(f"{path}: arena magic {magic!r}, this client speaks {MAGIC!r}")
            return cls(mm, info)
        except BaseException:
            mm.close()  # no view of it exists yet: unmapping is safe
            raise

    @staticmethod
    def _check_layout(info, size, token):
        if not info.path:
            raise _layout_error("empty path")
        if len(token) != TOKEN_BYTES:
            raise _layout_error(f"token of {len(token)} bytes, expected {TOKEN_BYTES}")
        if size < HEADER_BYTES:
            raise _layout_error(f"{size} bytes is smaller than the header")
        seen = set()
        for i, t in enumerate(info.tensors):
            if t.param_id in seen:
                raise _layout_error(f"tensors[{i}]: param_id {t.param_id!r} twice")
            seen.add(t.param_id)
            n = int(t.elements) * _F32
            for what, off in (("param_offset", int(t.param_offset)), ("grad_offset", int(t.grad_offset))):
                if off % _F32 or off < HEADER_BYTES or off + n > size:
                    raise _layout_error(f"tensors[{i}] {t.param_id!r}: {what} {off} + {n} bytes is outside "
                                        f"[{HEADER_BYTES}, {size}) or not 4-byte aligned")

    # -- use --------------------------------------------------------------
    def __len__(self):
        return len(self.param_ids)

    @property
    def closed(self):
        return self._mm is None

    def param(self, i) -> torch.Tensor:
        """Tensor i's parameter region: the server's live copy (flat float32)."""
        return self._params[i]

    def grad(self, i) -> torch.Tensor:
        """Tensor i's gradient region (flat float32), read by a step naming i."""
        return self._grads[i]

    def close(self):
        """Drops every view this object holds and unmaps the arena when nothing
        else uses it. A tensor still viewing the arena (the caller kept one)
        keeps the mapping alive until it is freed: unmapping under it would
        crash the process, and torch views do not pin the buffer against
        ``mmap.close()``, so the reference count decides."""
        mm, self._mm = self._mm, None
        if mm is None:
            return
        self._params, self._grads, self.lane = [], [], None
        # Our local `mm` and getrefcount's argument: nobody else holds it.
        if sys.getrefcount(mm) <= 2:
            mm.close()

    def __repr__(self):
        state = "closed" if self.closed else f"{self.bytes} bytes"
        return f"<mur.transport.Arena {self.path} {len(self)} tensors, {state}>"


__all__ = ["Arena", "TransportUnavailable"]


# -- the fast lane ----------------------------------------------------------------
# A step rung through the arena itself (ts-server/native/src/lane.cc has the
# control block): the client writes the step number and the arena indices,
# increments `seq` and wakes the server's lane thread with a futex; the lane
# runs the step and sets `ack` = seq, `status`. No RPC, so a small step costs
# microseconds instead of a gRPC round trip. Any status but 0 means nothing
# was applied: send the same step by RPC, which handles every other case.
_SYS_FUTEX = 202  # x86-64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_CONTROL = 64
_MAX_INDICES = (4096 - _CONTROL - 32) // 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# futex(uaddr, op, val, timeout, uaddr2, val3): pointers must not be narrowed to int.
_libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Lane:
    """The client end of the fast lane (x86-64 Linux: plain stores are ordered)."""

    APPLIED, NOT_TAKEN, REFUSED, NO_ANSWER = 0, 1, 2, 3

    def __init__(self, mm):
        self._seq = ctypes.c_uint32.from_buffer(mm, _CONTROL)
        self._ack = ctypes.c_uint32.from_buffer(mm, _CONTROL + 4)
        self._armed = ctypes.c_uint32.from_buffer(mm, _CONTROL + 8)
        self._status = ctypes.c_int32.from_buffer(mm, _CONTROL + 12)
        self._step = ctypes.c_uint64.from_buffer(mm, _CONTROL + 16)
        self._count = ctypes.c_uint32.from_buffer(mm, _CONTROL + 24)
        self._indices = (ctypes.c_uint32 * _MAX_INDICES).from_buffer(mm, _CONTROL + 32)

    def armed(self, count):
        return bool(self._armed.value) and 0 < count <= _MAX_INDICES

    def step(self, step_no, indices, wait_s=2.0):
        """Rings for one step: APPLIED; NOT_TAKEN or REFUSED (nothing applied); or
        NO_ANSWER (none within wait_s: the lane may still apply it)."""
        self._step.value = step_no
        self._count.value = len(indices)
        self._indices[:len(indices)] = indices
        seq = (self._seq.value + 1) & 0xFFFFFFFF
        self._seq.value = seq  # after every other store (x86-64 keeps store order)
        _libc.syscall(_SYS_FUTEX, ctypes.addressof(self._seq), _FUTEX_WAKE, 1, None, None, 0)
        for _ in range(200):  # a small step is done within a few microseconds
            if self._ack.value == seq:
                return self._status.value
        deadline = time.monotonic() + wait_s
        ts = _Timespec(0, 50_000_000)
        while True:
            ack = self._ack.value
            if ack == seq:
                return self._status.value
            if time.monotonic() > deadline:
                # No answer (a long step, or the server is gone): the RPC path
                # finds out; if the lane did apply it, the RPC replays it.
                return self.NO_ANSWER
            _libc.syscall(_SYS_FUTEX, ctypes.addressof(self._ack), _FUTEX_WAIT, ack, ctypes.byref(ts), None, 0)
