"""A server session as the client holds it: its id, its parameters by id, and
the calls that declare parameters (CreateSession, AddParameters: one
declaration for both), move parameter values (ImportState) and export or
import checkpoints. The planes (mur/planes) and the optimizer share one."""

from ._proto.mur.v1 import optimizer_pb2 as pb
from .planes.base import ELEMENT_BYTES, F32, f32_bytes


class Session:
    """``entries()`` yields (group id, param id, tensor) of every parameter
    in order (the optimizer's param_groups); ``by_id`` maps param id -> tensor."""

    def __init__(self, conn, caps, entries):
        self.conn, self.caps, self.entries = conn, caps, entries
        self.id = None
        self.by_id = {}

    # -- parameters ------------------------------------------------------------
    def _declare(self, decls, names):
        """ParamDecls for [(group id, param id, tensor)], with their values
        inline when they fit one message; (decls, {pid: values sent later})."""
        data = {pid: f32_bytes(p) for _, pid, p in decls}
        inline = sum(len(b) for b in data.values()) < self.caps.max_message_bytes * 0.9
        out = [
            pb.ParamDecl(
                id=pid,
                name=names.get(pid, pid),
                shape=list(p.shape),
                dtype=F32,
                group=g,
                data=data[pid] if inline else b"",
            )
            for g, pid, p in decls
        ]
        # Values the declaration did not carry: all of them for a large model;
        # a zero-element parameter's always (empty ParamDecl.data means
        # "values come later", so it would never get any).
        later = data if not inline else {pid: b for pid, b in data.items() if not b}
        return out, later

    def create(self, spec, decls, names):
        """CreateSession with these parameters; returns its resolved spec."""
        params, later = self._declare(decls, names)
        reply = self.conn.call(self.conn.stub.CreateSession, pb.CreateSessionRequest(spec=spec, params=params))
        self.id, self.conn.token = reply.session_id, reply.session_token
        self.by_id = {pid: p for _, pid, p in decls}
        if later:
            self.import_values(later)
        return reply.resolved_spec

    def add(self, groups, decls, names):
        """AddParameters: new groups ({group id: Struct}) and their parameters."""
        params, later = self._declare(decls, names)
        self.conn.call(
            self.conn.stub.AddParameters, pb.AddParametersRequest(session_id=self.id, groups=groups, params=params)
        )
        self.by_id.update({pid: p for _, pid, p in decls})
        if later:
            self.conn.retrying(lambda: self.import_values(later))

    # -- values and checkpoints -------------------------------------------------
    def chunks(self, pid, slot, data, dtype=F32):
        """TensorChunks of one tensor's bytes (at least one, for an empty tensor too)."""
        size = ELEMENT_BYTES[dtype]
        per = max(size, self.caps.chunk_bytes // size * size)
        total = len(data) // size
        mv = memoryview(data)
        off = 0
        while True:
            part = mv[off : off + per]
            yield pb.TensorChunk(
                param_id=pid, slot=slot, offset=off // size, total_elements=total, dtype=dtype, data=bytes(part)
            )
            off += len(part)
            if off >= len(data):
                return

    def import_frames(self, header, tensors):
        """ImportState: `header`, then [(param id, slot, float32 bytes)] in chunks."""

        def gen():
            yield pb.StateFrame(header=header)
            for pid, slot, data in tensors:
                for c in self.chunks(pid, slot, data):
                    yield pb.StateFrame(chunk=c)

        self.conn.call(self.conn.stub.ImportState, gen())

    def import_values(self, values):
        """Parameter values only ({pid: float32 bytes}); the step counter and
        the optimizer state stay as they are (last_step=0)."""
        self.import_frames(
            pb.StateHeader(session_id=self.id, last_step=0), [(pid, "", data) for pid, data in values.items()]
        )

    def export(self):
        """The session's checkpoint as StateFrames."""
        return self.conn.stream(self.conn.stub.ExportState, pb.ExportStateRequest(session_id=self.id))

    def close(self):
        if self.id is not None:
            self.conn.close_session(self.id)
            self.id = None
