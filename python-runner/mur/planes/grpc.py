"""The "grpc" data plane: each step sends every gradient inside gRPC
messages (float32, or bfloat16/float16 with ``wire_dtype=``; a unary Step,
or StepStream's chunks above the message limit) and writes the updated
parameters back in place. The client's parameters are copies of the
server's: an edit since the server last wrote them (rebound, written in
place, or through ``p.data`` or numpy) is found bit for bit and sent before
the next step, so it is never undone. The tcp plane (tcp.py) is this plane
with the tensor bytes on the server's data port. An L-BFGS round (mur/lbfgs.py)
goes the same way: unary, or StepStream (round and loss in StepBegin,
evaluate/round/restart in StepDone) when its gradients exceed one message."""

import numpy as np
import torch

from .._proto.mur.v1 import optimizer_pb2 as pb
from ..errors import InvalidArgumentError, MurError
from .base import BF16, F16, F32, MixedMarks, Plane, bits, f32_bytes, f32_view, read_only_view
from .rows import sparse_parts, write_rows

# The 2-byte wire dtypes and the torch dtype a gradient is rounded to for each.
HALF = {BF16: torch.bfloat16, F16: torch.float16}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """The tag and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(payload_len)


def gradient_fields(pid: str, shape, dtype: int, data) -> list:
    """StepRequest.grads (field 3) for one gradient, encoded by hand so the
    gradient's bytes are copied once, into the message (building a protobuf
    message object with a large bytes field costs far more in Python than
    one memcpy). `data` is any bytes-like object."""
    n = memoryview(data).nbytes
    dims = b"".join(_varint(d) for d in shape)
    tensor = [_field(1, len(dims)), dims, _varint(2 << 3 | 0), _varint(dtype), _field(3, n)]
    tensor_len = sum(len(x) for x in tensor) + n
    pid_b = pid.encode()
    grad = [_field(1, len(pid_b)), pid_b, _field(2, tensor_len)]
    grad_len = sum(len(x) for x in grad) + tensor_len
    return [_field(3, grad_len), *grad, *tensor, data]


def sparse_field(pid: str, shape, dtype: "pb.DType", data, rows) -> bytes:
    """StepRequest.grads (field 3) for one row-sparse gradient (Gradient.rows),
    through protobuf: the touched rows are a small part of the table."""
    values = pb.Tensor(shape=shape, dtype=dtype, data=bytes(data))
    grad = pb.Gradient(param_id=pid, rows=pb.SparseRows(indices=rows, values=values))
    return pb.StepRequest(grads=[grad]).SerializeToString()


def check_replayed(conn, replayed, number):
    """A first attempt answered "replayed": another writer of this session
    used this step number with the same request. Its result is not ours to
    take silently."""
    if replayed and conn.attempt == 0:
        raise MurError(
            f"step {number} had already been applied to this session (another client or "
            "process steps it with the same numbers); one session takes one writer"
        )


class GrpcPlane(Plane):
    name = "grpc"

    def __init__(self, session, wire_dtype=F32):
        self.session, self.conn = session, session.conn
        self.wire_dtype = wire_dtype
        self._half = {}  # per parameter: its gradient as bfloat16 or float16 (wire_dtype)
        self._mixed = MixedMarks()
        # What the server holds, as far as the client knows: the bits it last
        # sent or received, and each parameter's version and address right
        # after it was written. The parameters hold the server's values now.
        self._server_bits, self._marks = {}, {}
        self._own_bits = set()  # parameters whose _server_bits is a private copy (rows are written into it)
        self.last_reply = None  # the last StepReply (L-BFGS reads evaluate, round, restart)
        for _, pid, p in session.entries():
            self._server_bits[pid] = bits(p).clone() if p.dtype == torch.float32 else None
            self._mark(pid, p)

    @classmethod
    def open(cls, session, wire_dtype=F32, **_):
        return cls(session, wire_dtype)

    # -- edits ------------------------------------------------------------------
    def _mark(self, pid, p):
        self._marks[pid] = (p._version, p.data_ptr())
        if p.dtype != torch.float32:
            self._mixed.mark(pid, p)

    def _edited(self):
        out = {}
        for _, pid, p in self.session.entries():
            if pid not in self._marks:
                continue  # a group being added (add_param_group): not declared yet
            if p.dtype != torch.float32:
                if not self._mixed.unchanged(pid, p):
                    out[pid] = p
            elif self._marks.get(pid) != (p._version, p.data_ptr()) or not torch.equal(bits(p), self._server_bits[pid]):
                out[pid] = p
        return out

    def sync(self):
        """Sends the parameters the user edited since the server last wrote
        them, so the next step starts from the edit (ImportState, slot "" only)."""
        edited = self._edited()
        if not edited:
            return
        data = {pid: f32_bytes(p) for pid, p in edited.items()}
        self.conn.retrying(lambda: self.session.import_values(data))
        for pid, p in edited.items():
            self._server_bits[pid] = read_only_view(data[pid], np.int32)
            self._own_bits.discard(pid)
            self._mark(pid, p)

    def _take(self, pid, v):
        """The server's float32 values `v` (flat) into parameter pid."""
        p = self.session.by_id[pid]
        p.copy_(v.view(p.shape))
        self._server_bits[pid] = v.view(torch.int32)
        self._own_bits.discard(pid)
        self._mark(pid, p)

    def _take_rows(self, pid, rows, v):
        """The server's new values of `rows` (flat float32, packed) into parameter pid; its other rows are as they were."""
        p = self.session.by_id[pid]
        write_rows(p, rows, v)
        if pid not in self._own_bits:
            self._server_bits[pid] = self._server_bits[pid].clone()
            self._own_bits.add(pid)
        write_rows(self._server_bits[pid].view(p.shape), rows, v.view(torch.int32))
        self._mark(pid, p)

    def values_imported(self, values):
        for pid, v in values.items():
            self._take(pid, v)

    def params_added(self, pids):
        for pid in pids:
            p = self.session.by_id[pid]
            self._server_bits[pid] = bits(p).clone() if p.dtype == torch.float32 else None
            self._mark(pid, p)

    # -- the step -----------------------------------------------------------------
    def _encode(self, pid, g):
        """g as the wire carries it: float32, or rounded to the 2-byte dtype
        (round to nearest even, torch's conversion) in a buffer kept per
        parameter (a fresh buffer every step costs more in page faults than
        the conversion)."""
        half = HALF.get(self.wire_dtype)
        if half is None:
            return g.detach().to(dtype=torch.float32, device="cpu").contiguous()
        scratch = self._half.get(pid)
        if scratch is None or scratch.shape != g.shape or scratch.dtype != half:
            scratch = self._half[pid] = torch.empty(g.shape, dtype=half)
        scratch.copy_(g.detach())
        return scratch

    def _payload(self, prep):
        """[(pid, shape, bytes, tensor, rows)] of the step's gradients as sent
        (-grad where maximized); a sparse one: its values' shape and bytes and
        its row indices (rows None: dense)."""
        out = []
        for pid, p in prep.grads:
            rows = None
            if p.grad.is_sparse:
                rows, g = sparse_parts(p.grad, negate=pid in prep.maximized)
                t = self._encode(f"{pid}#rows", g)
            else:
                t = self._encode(pid, p.grad.neg() if pid in prep.maximized else p.grad)
            data = f32_view(t) if t.dtype == torch.float32 else memoryview(t.view(torch.int16).numpy()).cast("B")
            out.append((pid, list(t.shape), data, t, rows))
        return out

    def step(self, prep):
        self.sync()
        payload = self._payload(prep)
        values = self._send(prep, [(pid, shape, b, rows) for pid, shape, b, _, rows in payload])
        rows_of = {pid: rows for pid, _, _, _, rows in payload if rows is not None}
        for pid, data in values.items():
            v = data if torch.is_tensor(data) else read_only_view(data)
            # A replay after a server restart answers whole parameters, even for sparse gradients.
            if pid in rows_of and v.numel() != self.session.by_id[pid].numel():
                self._take_rows(pid, rows_of[pid], v)
            else:
                self._take(pid, v)

    def _send(self, prep, payload):
        """The step's gradients to the server; {pid: new float32 values} (a sparse one's rows only)."""
        size = sum(memoryview(b).nbytes for _, _, b, _ in payload)
        # Sparse gradients travel in Step messages only (StepStream's chunks are dense tensors); an L-BFGS
        # round above the limit streams like any step, its round and loss in StepBegin.
        if size < self.session.caps.max_message_bytes * 0.9 or any(r is not None for *_, r in payload):
            return self.conn.retrying(lambda: self._step_unary(prep, payload))
        return self.conn.retrying(lambda: self._step_stream(prep, payload))

    def _step_unary(self, prep, payload):
        # The request's small fields through protobuf, the gradients appended by
        # hand: a message is the concatenation of its fields.
        head = prep.request(session_id=self.session.id).SerializeToString()
        req = b"".join(
            [
                head,
                *(
                    x
                    for pid, shape, b, rows in payload
                    for x in (
                        gradient_fields(pid, shape, self.wire_dtype, b)
                        if rows is None
                        else [sparse_field(pid, shape, self.wire_dtype, b, rows)]
                    )
                ),
            ]
        )
        reply = self.last_reply = self.conn.call(self.conn.raw_step, req)
        check_replayed(self.conn, reply.replayed, prep.number)
        return {v.param_id: (v.rows.values.data if v.HasField("rows") else v.value.data) for v in reply.params}

    def _step_stream(self, prep, payload):
        closure = dict(round=prep.round or 0, loss=prep.loss) if prep.loss is not None else {}

        def frames():
            yield pb.StepStreamRequest(
                begin=pb.StepBegin(
                    session_id=self.session.id, step=prep.number, group_overrides=prep.overrides, **closure
                )
            )
            for pid, _, b, _ in payload:
                for c in self.session.chunks(pid, "", b, self.wire_dtype):
                    yield pb.StepStreamRequest(grad=c)
            yield pb.StepStreamRequest(end=pb.StepEnd())

        parts = {}
        for r in self.conn.stream(self.conn.stub.StepStream, frames()):
            if r.HasField("param"):
                parts.setdefault(r.param.param_id, []).append(r.param.data)
            elif r.HasField("done"):
                self.last_reply = r.done  # L-BFGS reads evaluate, round and restart, as on a StepReply
                if closure:
                    check_replayed(self.conn, r.done.replayed, prep.number)
        return {pid: b"".join(chunks) for pid, chunks in parts.items()}

    def validate(self, prep):
        """The gradients are checked here as the server would check them (the
        finiteness of the very values it would receive: bfloat16-rounded ones
        with wire_dtype="bfloat16"), and the server checks the rest (the step
        number, the hyperparameters) without them, so that the step uploads
        them once, not twice."""
        for pid, _, _, t, _ in self._payload(prep):
            sent = t.reshape(-1)
            finite = torch.isfinite(sent)
            if not bool(finite.all()):
                k = int((~finite).nonzero()[0])
                msg = f"grads '{pid}': element {k} is {float(sent[k])} (must be finite)"
                raise InvalidArgumentError(f"{self.conn.rename(msg) if self.conn.rename else msg} [INVALID_ARGUMENT]")
        req = prep.request(session_id=self.session.id, validate_only=True).SerializeToString()
        self.conn.retrying(lambda: self.conn.call(self.conn.raw_step, req))

    def close(self):
        pass
