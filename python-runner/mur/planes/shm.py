"""The "shm" data plane (same host, native engine): the client side of a
session's shared-memory arena, its fast lane, and ``ShmPlane``. Every float32
parameter's ``p.data`` is a view of the server's copy, so the client's
weights *are* the server's: a step puts the gradients in the arena (none
when ``p.grad`` already is the arena's gradient view) and rings the fast
lane or sends one small RPC; the server updates the parameters in place.
Edits between steps (loading weights, masks, clamps) are what the next step
starts from.

The server answers ``OpenArena`` with an ``ArenaInfo``: a memfd of the server
process reachable as ``/proc/<server pid>/fd/<n>``, its size, a 32-byte random
token at offset 0 and, per parameter, a float32 parameter region (the server's
live copy) and a float32 gradient region. ``Arena.open(info)`` maps it
read-write (MAP_SHARED), closes its descriptor at once, checks the token and
the magic, and exposes one flat float32 torch view per region.

Any failure raises ``TransportUnavailable`` with the reason; it means "use the
gRPC transport". Nothing here creates a file: the memory belongs to the
server's memfd and the kernel frees it when the last mapping goes away.

L-BFGS (mur/lbfgs.py) uses the same regions: each round's gradients go into
the gradient regions, the round (StepRequest.round, .loss) by RPC, and the
server writes the point it wants evaluated next (or the step's result, or
after a ``restart`` the parameters before the step) into the parameter
regions, which ``p.data`` views: the closure runs there.
"""

import ctypes
import mmap
import os
import stat
import sys
import time

import grpc
import torch

from .._proto.mur.v1 import optimizer_pb2 as pb
from ..errors import ARENA_GONE, FailedPreconditionError, MurError, TransportUnavailable
from .base import PARAM_DTYPES, MixedMarks, Plane, copy_all, is_view_of, view_key
from .grpc import check_replayed
from .hot import HAS_HOOK, HotGrads
from .rows import sparse_parts

TOKEN_BYTES = 32
MAGIC = b"MUR-ARENA-V2"  # at [32, 48), NUL-padded (ts-server/src/transport/arena.ts)
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
        self.staging = bool(info.staging)  # the lane stages updates while backward runs (overlap)
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
            raise TransportUnavailable(
                f"{path} is not the server's arena (not a regular file): "
                "the server is on another host or in another pid namespace"
            )
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
                    "(another host or pid namespace)"
                )
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
                    "or in another pid namespace"
                )
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
                    raise _layout_error(
                        f"tensors[{i}] {t.param_id!r}: {what} {off} + {n} bytes is outside "
                        f"[{HEADER_BYTES}, {size}) or not 4-byte aligned"
                    )

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
        return f"<mur.planes.shm.Arena {self.path} {len(self)} tensors, {state}>"


# -- the fast lane ----------------------------------------------------------------
# A step rung through the arena itself (ts-server/native/src/lane.cc has the
# control block): the client writes the step number and the arena indices,
# increments `seq` and `bell` and wakes the server's lane thread with a futex
# on `bell`; the lane runs the step and sets `ack` = seq, `status`. No RPC, so
# a small step costs microseconds instead of a gRPC round trip. Any status but
# 0 means nothing was applied: send the same step by RPC, which handles every
# other case.
#
# The queue (overlap=True): while backward runs, each final gradient's arena
# index is queued (`queue[qwrite % _QUEUE]`, then `qwrite` += 1, `bell` += 1,
# a wake when the lane sleeps) and the lane scans it for finiteness at once.
# A step index with bit 15 (_UNCHANGED) set tells the lane that gradient has
# not changed since it was queued, so a clean check of it stands; without the
# bit the lane scans it at the step as before. Bit 14 (_SPECULATE) besides
# tells it the step uses that gradient as queued (not negated for maximize):
# the update the lane computed out of place when it checked it (speculation,
# lane.cc) may be committed instead of computed at the step. Offsets from
# _CONTROL:
#   +0 seq, +4 ack, +8 armed, +12 status (u32/i32), +16 step (u64), +24 count,
#   +28 bell, +32 qwrite, +36 qread, +40 sleeping, +44 staged (speculations
#   committed), +48 made (speculations made) (u32), +64 indices (u16 x 1000,
#   each < 0x4000), +2112 queue (u16 x 512).
_SYS_FUTEX = 202  # x86-64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_CONTROL = 64
_MAX_INDICES = 1000
_QUEUE = 512
_UNCHANGED = 0x8000
_SPECULATE = 0x4000
_INDEX = 0x3FFF  # an index's own bits
_CORES = len(os.sched_getaffinity(0))  # the cores this process (and a server="auto" it starts) may run on
_POLL_S = 1e-3  # how long a step's answer is polled for before the client sleeps on it
_WAKE_BYTES = 1 << 20  # queued gradient bytes that are worth waking a sleeping lane for
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# futex(uaddr, op, val, timeout, uaddr2, val3): pointers must not be narrowed to int.
_libc.syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_uint,
]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Lane:
    """The client end of the fast lane (x86-64 Linux: plain stores are ordered)."""

    APPLIED, NOT_TAKEN, REFUSED, NO_ANSWER = 0, 1, 2, 3

    def __init__(self, mm):
        u32 = lambda at: ctypes.c_uint32.from_buffer(mm, _CONTROL + at)  # noqa: E731
        self._seq, self._ack, self._armed = u32(0), u32(4), u32(8)
        self._status = ctypes.c_int32.from_buffer(mm, _CONTROL + 12)
        self._step = ctypes.c_uint64.from_buffer(mm, _CONTROL + 16)
        self._count, self._bell = u32(24), u32(28)
        self._qwrite, self._qread, self._sleeping = u32(32), u32(36), u32(40)
        self._staged, self._made = u32(44), u32(48)
        self._indices = (ctypes.c_uint16 * _MAX_INDICES).from_buffer(mm, _CONTROL + 64)
        self._queue = (ctypes.c_uint16 * _QUEUE).from_buffer(mm, _CONTROL + 2112)
        self._waiting = 0  # bytes queued since the lane was last woken

    def armed(self, count, top=0):
        """The lane takes a step of `count` tensors whose largest arena index is `top`."""
        return bool(self._armed.value) and 0 < count <= _MAX_INDICES and top < _SPECULATE

    @property
    def speculations(self):
        """(made, committed): the lane's counts of updates staged while
        backward ran and of those a step committed, since the arena opened."""
        return self._made.value, self._staged.value

    def queue(self, index, nbytes=_WAKE_BYTES):
        """Tells the lane "tensor `index`'s gradient (`nbytes`) is final": it
        scans it soon. False (nothing queued) when the lane is not armed or the
        queue is full. A sleeping lane is woken once _WAKE_BYTES are waiting:
        a wake costs a context switch, more than scanning a small tensor, so
        small gradients are checked in batches (the step's ring takes the rest)."""
        if not self._armed.value or index >= _SPECULATE:
            return False
        w = self._qwrite.value
        if (w - self._qread.value) & 0xFFFFFFFF >= _QUEUE:
            return False
        self._queue[w % _QUEUE] = index
        self._qwrite.value = (w + 1) & 0xFFFFFFFF  # after the entry (x86-64 keeps store order)
        self._ring()
        self._waiting += nbytes
        if self._waiting >= _WAKE_BYTES and self._sleeping.value:  # a lane about to sleep sees the new bell
            self.wake()
        return True

    def prewake(self):
        """Tells the lane "a step is coming" (step() began preparing it): a
        sleeping lane wakes and polls for the ring (lane.cc AwaitWork) instead
        of being woken by it, which costs tens of microseconds on a virtual
        machine, hidden here behind the step's own preparation."""
        if not self._armed.value:
            return
        self._ring()
        if self._sleeping.value:
            self.wake()

    def _ring(self):
        """Bumps the bell (the lane's futex word): a lane about to sleep on it
        sees the change and stays awake; a sleeping one needs wake() as well."""
        self._bell.value = (self._bell.value + 1) & 0xFFFFFFFF

    def wake(self):
        """Wakes a sleeping lane (it takes whatever is queued at once)."""
        self._waiting = 0
        _libc.syscall(_SYS_FUTEX, ctypes.addressof(self._bell), _FUTEX_WAKE, 1, None, None, 0)

    def drain(self, wait_s=30.0):
        """Wakes the lane and waits until it has taken (checked, and staged the
        update of) every queued gradient; False when wait_s passed first."""
        self.wake()
        deadline = time.monotonic() + wait_s
        while self._qread.value != self._qwrite.value:
            if time.monotonic() > deadline:
                return False
            os.sched_yield()
        return True

    def step(self, step_no, indices, wait_s=2.0):
        """Rings for one step: APPLIED; NOT_TAKEN or REFUSED (nothing applied); or
        NO_ANSWER (none within wait_s: the lane may still apply it). An index
        may carry _UNCHANGED (its queued check stands)."""
        self._step.value = step_no
        self._count.value = len(indices)
        self._indices[: len(indices)] = indices
        seq = (self._seq.value + 1) & 0xFFFFFFFF
        self._seq.value = seq  # after every other store (x86-64 keeps store order)
        self._ring()
        self.wake()
        # Polled, not slept on, for up to _POLL_S: a futex wake-up takes tens of
        # microseconds on a virtual machine, more than a small step. The poll
        # yields the core in between, so a server thread that needs this core
        # (a server with as many threads as the host has cores) gets it.
        now = time.monotonic()
        polled = now + _POLL_S
        while now < polled:
            if self._ack.value == seq:
                return self._status.value
            os.sched_yield()
            now = time.monotonic()
        deadline = now + wait_s
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


# -- the plane --------------------------------------------------------------------
# OpenArena refusals that mean "no shared memory here" (not an error of the call).
_NO_SHM = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


class ShmPlane(Plane):
    """Parameters that are not float32 keep their own memory and take the
    float32 master (cast) after each step; their edits are told by their bits."""

    name = "shm"

    def __init__(self, session, arena, views, overlap=None):
        self.session, self.conn = session, session.conn
        self.arena, self.views = arena, views  # views: pid -> (arena index, parameter view, gradient view)
        self.lane_steps = 0
        # overlap: gradients moved and checked as backward makes them (hot.py), where torch has the hook
        self.hot = HotGrads(self) if HAS_HOOK and overlap else None
        self._overlap = overlap if self.hot is not None else False  # True (speculate) or "check"
        self._lane_key = None  # the hyperparameters the server's fast lane holds, once a step set them
        self.last_reply = None  # the last StepReply by RPC (L-BFGS reads evaluate, round, restart)
        self._mixed = MixedMarks()
        for _, pid, p in session.entries():
            if p.dtype == torch.float32:
                p.data = views[pid][1]
            else:
                self._mixed.mark(pid, p)
        if self.hot is not None:
            self.hot.attach((pid, p) for _, pid, p in session.entries())

    @classmethod
    def open(cls, session, overlap=None, **_):
        caps = session.caps
        if "shm" not in caps.transports:
            raise TransportUnavailable(
                f"the server at {session.conn.address} does not offer it (transports: {', '.join(caps.transports)}; "
                f"its engine is '{caps.backend}', shared memory needs the native engine)"
            )
        overlap = overlap if HAS_HOOK and overlap else False
        return cls(session, *request_arena(session, _NO_SHM, overlap=_staging(overlap)), overlap=overlap)

    @property
    def views(self):
        """pid -> (arena index, parameter view, gradient view)."""
        return self._views

    @views.setter
    def views(self, views):
        # The views' keys (view_key; None for an empty region), made once per
        # arena: the step compares each parameter and gradient with them.
        self._views = views
        self._keys = {pid: (view_key(pv), view_key(gv)) if pv.numel() else None for pid, (_, pv, gv) in views.items()}

    # -- moving between arenas ----------------------------------------------------
    def _move_to(self, arena, views, carry_grads):
        """Parameters (and gradients viewing the old arena) onto a new arena;
        the old mapping goes when nothing views it any more."""
        old, old_views = self.arena, self.views
        for _, pid, p in self.session.entries():
            _, pv, gv = views[pid]
            og = old_views.get(pid, (None, None, None))[2]
            if og is not None and og.numel() and (carry_grads or (p.grad is not None and is_view_of(p.grad, og))):
                gv.copy_(og)  # this step's (or the accumulated) gradient comes along
            if og is not None and p.grad is not None and og.numel() and is_view_of(p.grad, og):
                p.grad = gv
            if p.dtype == torch.float32:
                p.data = pv
            else:
                self._mixed.mark(pid, p)
        self.arena, self.views, self._lane_key = arena, views, None
        if self.hot is not None:
            self.hot.forget()  # marks name the old arena's views
        old.close()

    def _reattach(self):
        """After a lost connection or an arena gone: if the server restarted
        (its arena went with its process), map its new arena, which holds the
        session's recovered values, carrying this step's gradients over."""
        arena, views = request_arena(self.session, _NO_SHM, overlap=_staging(self._overlap))
        if arena.token == self.arena.token:
            arena.close()  # the same server: only the connection was lost
            return
        self._move_to(arena, views, carry_grads=True)

    def params_added(self, pids):
        """The server gave its arena up (an arena cannot grow) and OpenArena
        makes one covering every parameter, holding the server's values."""
        arena, views = request_arena(
            self.session,
            (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED),
            overlap=_staging(self._overlap),
        )
        self._move_to(arena, views, carry_grads=False)
        if self.hot is not None:
            self.hot.attach((pid, p) for _, pid, p in self.session.entries() if pid in pids)

    def sync(self):
        """Points every parameter back at its arena view, copying the values of
        one the user rebound (``p.data = t``) into the arena first."""
        keys = self._keys
        for _, pid, p in self.session.entries():
            if pid not in keys:
                continue  # a group being added (add_param_group): not in any arena yet
            key = keys[pid]
            if key is None or view_key(p) == key[0]:  # p itself, not p.data (which makes a tensor per call)
                continue
            _, pv, _ = self.views[pid]
            if p.dtype in PARAM_DTYPES and p.dtype != torch.float32 and p.device.type == "cpu" and p.shape == pv.shape:
                # Not float32: the arena holds the float32 master; an edit of the
                # parameter (its bits changed since the server's value was written
                # into it) replaces the master.
                if not self._mixed.unchanged(pid, p):
                    pv.copy_(p.detach())
                    self._mixed.mark(pid, p)
                continue
            if p.shape != pv.shape:
                raise ValueError(
                    f"parameter {pid}: shape {tuple(p.shape)}, but the session was created with {tuple(pv.shape)}"
                )
            if p.device.type != "cpu" or p.dtype != torch.float32:
                raise ValueError(
                    f"parameter {pid} became a {p.dtype} tensor on {p.device} after the optimizer was "
                    "created on the shm transport, whose parameters are float32 CPU memory "
                    "(use transport='grpc')"
                )
            pv.copy_(p.detach())
            p.data = pv

    def values_imported(self, values):
        for _, pid, p in self.session.entries():  # parameters that are not float32 take the imported values
            if p.dtype != torch.float32:
                p.copy_(self.views[pid][1])
                self._mixed.mark(pid, p)

    # -- the step -------------------------------------------------------------------
    def _place(self, prep, for_step):
        """The step's gradients into the arena's gradient regions; their arena
        indices (step only: with _UNCHANGED where the lane's check of a
        gradient queued by the hook stands), (step only) the parameters
        whose arena gradient was negated in place for maximize (restored
        after the step), and the sparse ones as ArenaRows (their values
        packed from the region's start)."""
        self.sync()
        indices, flipped, sparse = [], [], []
        keys, hot = self._keys, self.hot if for_step else None
        # Plain float32 copies wait for one copy_all after the loop; with
        # maximize in the step every copy is made in turn, before the negations
        # that follow it (a p.grad may be another parameter's arena gradient).
        dst, src, adopt = [], [], []
        defer = not (for_step and prep.maximized)
        for pid, p in prep.grads:
            i, _, gv = self.views[pid]
            g = p.grad
            negate = for_step and pid in prep.maximized  # finiteness does not depend on the sign
            if g.is_sparse:
                rows, values = sparse_parts(g, negate=negate)
                gv.reshape(-1)[: values.numel()].copy_(values.reshape(-1))
                sparse.append(pb.ArenaRows(tensor=i, indices=rows))
                continue
            in_arena, checked = hot.take(pid, p, gv) if hot is not None else (False, False)
            key = keys[pid]
            # Not the region's view: another address (the common case after torch's zero_grad, one call), or
            # the address with another shape, strides or dtype.
            if key is not None and (g.data_ptr() != key[1][0] or view_key(g) != key[1]):
                if in_arena:  # the hook copied (cast) this very gradient, unchanged since
                    if negate:
                        gv.neg_()  # gv is the step's copy: the user's p.grad is not touched
                elif negate:
                    gv.copy_(g).neg_()  # p.grad stays the user's own tensor, its sign untouched
                else:
                    if defer and g.dtype == torch.float32:
                        dst.append(gv)
                        src.append(g)
                    else:
                        gv.copy_(g)  # cast to float32 for a parameter that is not float32
                    if for_step and g.dtype == torch.float32 and p.dtype == torch.float32:
                        adopt.append((p, gv))
            elif key is not None and negate:
                gv.neg_()  # p.grad is the arena's gradient: negated for the step, restored after it
                flipped.append(pid)
            # _SPECULATE: the lane's staged update of this gradient may stand (not negated here)
            indices.append(i | _UNCHANGED | (0 if negate else _SPECULATE) if checked else i)
        copy_all(dst, src)
        for p, gv in adopt:  # once gv holds p.grad's values
            p.grad = gv  # backward accumulates here from now on (zero_grad(set_to_none=False))
        if hot is not None:
            hot.forget()  # a mark is good for one step (a parameter not stepped keeps none)
        return indices, flipped, pb.ArenaSparse(rows=sparse) if sparse else None

    def _rpc(self, req):
        """Step by RPC; a lost connection or an arena gone (a server restarted
        on its --state-dir: the session is back, its arena went with the old
        process) maps the new arena and sends the same step again."""
        send = lambda: self.conn.call(self.conn.stub.Step, req)  # noqa: E731
        try:
            return self.conn.retrying(send, on_lost=self._reattach)
        except FailedPreconditionError as e:
            if e.reason != ARENA_GONE:
                raise
            self._reattach()
            return self.conn.retrying(send, on_lost=self._reattach)

    def step_coming(self):
        # The lane polls for the ring on a core of its own: only when torch's
        # threads leave one free (its OpenMP threads spin on theirs after
        # backward, and a lane polling beside one of them shares that core by
        # time slices, losing far more than a wake-up costs: docs/data-path.md).
        lane = self.arena.lane if self.arena is not None else None
        if lane is not None and torch.get_num_threads() < _CORES:
            lane.prewake()

    def step(self, prep):
        indices, flipped, sparse = self._place(prep, for_step=True)
        try:
            self._ring(prep, indices, sparse)
            # Parameters that are not float32 take the new master values, cast: those stepped, or every one
            # after an L-BFGS round (the server wrote the next point, or the step's result, into each region).
            moved = self.session.entries() if prep.loss is not None else ((None, pid, p) for pid, p in prep.grads)
            for _, pid, p in moved:
                if p.dtype != torch.float32:
                    p.copy_(self.views[pid][1])
                    self._mixed.mark(pid, p)
        finally:
            for pid in flipped:  # negation is exact: the user's p.grad is bit for bit what it was
                self.views[pid][2].neg_()

    def _ring(self, prep, indices, sparse=None):
        # The fast lane when the server armed it and the hyperparameters are
        # the ones it holds (a scheduler's change goes by RPC, with overrides);
        # a step with sparse gradients goes by RPC (the lane steps whole regions), and so does an L-BFGS
        # round (the lane has no round or loss; the server never arms it for lbfgs).
        lane = self.arena.lane
        replay_ok = False
        marked, indices = indices, [i & _INDEX for i in indices]
        if (
            sparse is None
            and prep.loss is None
            and lane is not None
            and prep.hypers == self._lane_key
            and lane.armed(len(indices), max(indices))
        ):
            status = lane.step(prep.number, marked, wait_s=min(2.0, self.conn.timeout or 2.0))
            if status == lane.APPLIED:
                self.lane_steps += 1
                return
            replay_ok = status == lane.NO_ANSWER  # the lane may have applied it after all
        req = prep.request(session_id=self.session.id, arena_grads=indices, arena_sparse=sparse)
        reply = self.last_reply = self._rpc(req)
        if not replay_ok:
            check_replayed(self.conn, reply.replayed, prep.number)
        self._lane_key = prep.hypers

    def validate(self, prep):
        """On shm the gradients are copied into the arena first (step() then finds them there)."""
        indices, _, sparse = self._place(prep, for_step=False)  # no _UNCHANGED: for_step=False
        self._rpc(
            prep.request(session_id=self.session.id, arena_grads=indices, arena_sparse=sparse, validate_only=True)
        )

    def close(self):
        """Gives every parameter (and gradient) that views the arena its own copy."""
        if self.hot is not None:
            self.hot.detach()
        try:
            with torch.no_grad():
                for _, pid, p in self.session.entries():
                    _, pv, gv = self.views.get(pid, (None, None, None))
                    if pv is None or pv.numel() == 0:
                        continue
                    if is_view_of(p.data, pv):
                        p.data = pv.clone()
                    if p.grad is not None and is_view_of(p.grad, gv):
                        p.grad = gv.clone()
        finally:
            self.views = {}
            self.arena.close()


def _staging(overlap):
    """Whether to ask for the lane's staging (speculated updates): with
    overlap=True; overlap="check" only moves and checks the gradients while
    hot (no staging on the server)."""
    return overlap is True


def request_arena(session, unavailable, overlap=False):
    """The session's arena, mapped (OpenArena), and each parameter's
    (index, parameter view, gradient view) in it; TransportUnavailable when
    a parameter is not in CPU memory, the arena does not match the session,
    or the server answers one of the status codes `unavailable`. `overlap`:
    ask for the lane's staging too (speculated updates; within --max-bytes)."""
    for _, pid, p in session.entries():
        if p.device.type != "cpu":
            raise TransportUnavailable(f"parameter {pid} is on {p.device}; the arena is CPU memory")
    try:
        info = session.conn.call(
            session.conn.stub.OpenArena, pb.OpenArenaRequest(session_id=session.id, overlap=overlap)
        )
    except MurError as e:
        if e.code in unavailable:
            raise TransportUnavailable(f"OpenArena: {e}") from None
        raise
    arena = Arena.open(info)
    try:
        views = {}
        for _, pid, p in session.entries():
            i = arena.index.get(pid)
            if i is None or arena.param(i).numel() != p.numel():
                raise TransportUnavailable(
                    f"the arena does not match the session: parameter {pid} "
                    f"({p.numel()} elements) is {'absent' if i is None else 'resized'}"
                )
            views[pid] = (i, arena.param(i).view(p.shape), arena.grad(i).view(p.shape))
    except BaseException:
        arena.close()
        raise
    return arena, views


__all__ = ["Arena", "Lane", "ShmPlane", "TransportUnavailable"]
