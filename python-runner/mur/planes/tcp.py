"""The "tcp" data plane (proto: DataStepHeader): the grpc plane's copies
and edit detection (grpc.py), with a step's tensor bytes on the server's
data port.

A step's tensor bytes on a plain TCP connection (TLS when the gRPC channel
uses TLS) beside the gRPC channel, for a server on another host: a plain
socket moves tensor bytes several times faster than grpcio and grpc-js do
(docs/data-path.md has the measured echo ceilings; make bench-e2e measures them).

    request: u32 LE n | DataStepHeader (n bytes) | gradient bytes, in order
    reply:   u32 LE n | DataStepReplyHeader      | float32 parameter bytes, in order

Gradients are sent from the tensors' own memory (``sendmsg`` gathers them,
no copy on a plaintext connection); parameters are received into one of two
reused buffers, alternately, so the values of the last step stay intact
while the next one is received (the optimizer compares them with the user's
parameters to find edits; a reply cut in the middle never tears them).
"""

import math
import socket
import struct

import numpy as np
import torch

from .._proto.mur.v1 import optimizer_pb2 as pb
from ..connection import ssl_context
from ..errors import (
    ConnectionLostError,
    DeadlineExceededError,
    FailedPreconditionError,
    MurError,
    TransportUnavailable,
    error_for,
)
from .base import F32
from .grpc import GrpcPlane, check_replayed

_LEN = struct.Struct("<I")


class DataPlane:
    """One connection to a server's data port, opened on first use and again
    after a failure (the optimizer's retry loop calls ``step`` again)."""

    def __init__(self, host, port, timeout=None, ssl_context=None, server_hostname=None, rename=None):
        self.address = (host, port)
        self._rename = rename
        self._timeout = timeout
        self._ssl = ssl_context
        self._server_hostname = server_hostname or host
        self._sock = None
        self._buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
        self._floats = [torch.empty(0), torch.empty(0)]  # the same memory, as float32 tensors
        self._next = 0

    def connect(self):
        if self._sock is not None:
            return
        try:
            s = socket.create_connection(self.address, timeout=self._timeout)
        except socket.timeout:
            raise DeadlineExceededError(
                f"data plane: connecting to {self.address[0]}:{self.address[1]} timed out"
            ) from None
        except OSError as e:
            raise ConnectionLostError(
                f"data plane: cannot connect to {self.address[0]}:{self.address[1]}: {e}"
            ) from None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            try:
                s = self._ssl.wrap_socket(s, server_hostname=self._server_hostname)
            except (OSError, ValueError) as e:
                s.close()
                raise ConnectionLostError(
                    f"data plane: TLS handshake with {self.address[0]}:{self.address[1]} failed: {e}"
                ) from None
        self._sock = s

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _send(self, parts):
        # Byte views (the gradients mostly come as such already, and casting again is not free).
        views = [p if isinstance(p, memoryview) and p.format == "B" else memoryview(p).cast("B") for p in parts]
        if self._ssl is not None:  # an SSL socket has no sendmsg
            for v in views:
                self._sock.sendall(v)
            return
        while views:
            sent = self._sock.sendmsg(views[:512])  # IOV_MAX is 1024 on Linux
            while sent and views:
                if sent >= views[0].nbytes:
                    sent -= views[0].nbytes
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _recv_into(self, view):
        got = 0
        while got < view.nbytes:
            n = self._sock.recv_into(view[got:], view.nbytes - got)
            if n == 0:
                raise ConnectionLostError(f"data plane: {self.address[0]}:{self.address[1]} closed the connection")
            got += n

    def step(self, token, request, payload):
        """Sends ``request`` (a StepRequest whose gradients carry shape and
        dtype, no data) and the gradient bytes ``payload`` (one buffer per
        gradient, in order). Returns (StepReply, {param_id: a flat float32
        tensor of its values}); the tensors are views of a reused buffer, valid
        until the step after next.
        Raises the MurError of the server's status, ConnectionLostError (the
        step may or may not have been applied: send it again with the same
        step number) or DeadlineExceededError."""
        self.connect()
        try:
            header = pb.DataStepHeader(session_token=token or "", request=request).SerializeToString()
            self._send([_LEN.pack(len(header)), header, *payload])
            n = bytearray(4)
            self._recv_into(memoryview(n))
            size = _LEN.unpack(n)[0]
            head = bytearray(size)
            self._recv_into(memoryview(head))
            reply = pb.DataStepReplyHeader.FromString(bytes(head))
            if reply.code != 0:
                # The server closes the connection after refusing a header it
                # could not read past: start afresh after any refusal.
                self.close()
                raise error_for(reply.code, reply.message, rename=self._rename)
            sizes = [
                4 * math.prod((p.rows.values if p.HasField("rows") else p.value).shape) for p in reply.reply.params
            ]
            total = sum(sizes)
            buf = self._buffers[self._next]
            if buf.nbytes < total:
                buf = self._buffers[self._next] = np.empty(total, np.uint8)
                self._floats[self._next] = torch.from_numpy(buf.view(np.float32))
            self._recv_into(memoryview(buf)[:total])
        except socket.timeout:
            self.close()
            raise DeadlineExceededError(
                f"data plane: no reply from {self.address[0]}:{self.address[1]} within {self._timeout} s"
            ) from None
        except (OSError, EOFError) as e:
            self.close()
            raise ConnectionLostError(
                f"data plane: connection to {self.address[0]}:{self.address[1]} lost: {e}"
            ) from None
        except ConnectionLostError:
            self.close()
            raise
        floats = self._floats[self._next]
        if total:  # a reply without values (a validation) leaves the last values where they are
            self._next ^= 1
        out, at = {}, 0
        for p, n in zip(reply.reply.params, sizes):
            out[p.param_id] = floats[at // 4 : (at + n) // 4]
            at += n
        return reply.reply, out


class TcpPlane(GrpcPlane):
    name = "tcp"

    def __init__(self, session, wire_dtype, data):
        super().__init__(session, wire_dtype)
        self.data = data

    @classmethod
    def open(cls, session, wire_dtype=F32, **_):
        """The data port when the server offers one and it answers, at the host
        this client reached the server at."""
        caps, address = session.caps, session.conn.address
        if "tcp" not in caps.transports or not caps.data_port:
            raise TransportUnavailable(
                f"the server at {address} has no data port (started with --socket or --data-port off)", "tcp"
            )
        host = address.rsplit(":", 1)[0] if ":" in address and not address.startswith("unix:") else None
        if host is None:
            raise TransportUnavailable(f"{address} is not a host:port address", "tcp")
        host = host.strip("[]")  # an IPv6 literal
        tls = session.conn.tls
        data = DataPlane(
            host,
            caps.data_port,
            timeout=session.conn.timeout,
            ssl_context=ssl_context(*tls) if tls is not None else None,
            rename=session.conn.rename,
        )
        try:
            data.connect()
        except MurError as e:
            raise TransportUnavailable(str(e), "tcp") from None
        return cls(session, wire_dtype, data)

    def _refind(self):
        """Before a retry: a server restarted (on its --state-dir) may listen
        on another data port; GetCapabilities says which."""
        conn = self.conn
        caps = conn.call(conn.stub.GetCapabilities, pb.GetCapabilitiesRequest())
        if "tcp" not in caps.transports or not caps.data_port:
            raise FailedPreconditionError(
                f"the server at {conn.address} came back without a data port "
                "(--data-port off?): create the optimizer again to use gRPC"
            )
        self.data.close()
        self.data.address = (self.data.address[0], caps.data_port)

    def _send(self, prep, payload):
        def once():
            request = prep.request(
                session_id=self.session.id,
                grads=[
                    pb.Gradient(param_id=pid, grad=pb.Tensor(shape=shape, dtype=self.wire_dtype))
                    if rows is None
                    else pb.Gradient(
                        param_id=pid,
                        rows=pb.SparseRows(indices=rows, values=pb.Tensor(shape=shape, dtype=self.wire_dtype)),
                    )
                    for pid, shape, _, rows in payload
                ],
            )
            reply, values = self.data.step(self.conn.token, request, [b for _, _, b, _ in payload])
            self.last_reply = reply
            check_replayed(self.conn, reply.replayed, prep.number)
            return values

        return self.conn.retrying(once, on_lost=self._refind)

    def close(self):
        self.data.close()
