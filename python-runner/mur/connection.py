"""The connection to a mur server: the gRPC channel, TLS, deadlines, the
session token, retries with capped backoff, and server errors as typed
MurErrors. Every plane (mur/planes) calls the server through one of these."""

import os
import random
import re
import ssl
import tempfile
import time

import grpc

from ._proto.mur.v1 import optimizer_pb2 as pb
from ._proto.mur.v1 import optimizer_pb2_grpc as pbg
from .errors import ConnectionLostError, ServerUnreachableError, from_rpc_error

BACKOFF = 0.1  # seconds before the first retry, doubling up to BACKOFF_CAP
# The longest wait between two retries (before jitter, which is x0.5-1.5): a
# server listening again is found within about a second (issue 22's promise).
BACKOFF_CAP = 0.5
CLOSE_TIMEOUT = 10.0  # CloseSession's deadline: close() never waits long on a dead server

# Its own connection (not grpc's process-wide subchannel pool): a dead
# server's reconnect backoff never delays another optimizer. Large frames and
# windows: a 16 MB gradient should not wait for WINDOW_UPDATEs every 64 KB or
# travel in 16 KB frames. grpc's own reconnect backoff is capped like ours, so
# that a restarted server is found within BACKOFF_CAP x 1.5 + 0.5 s of
# listening again, not after grpc's default (up to 2 min).
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.http2.max_frame_size", 16777215),
    ("grpc.http2.lookahead_bytes", 16 << 20),
    ("grpc.http2.bdp_probe", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_CAP * 1000)),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def backoff_delay(attempt, rng=random.random):
    """Seconds to wait before retry number `attempt` + 1: BACKOFF doubling per
    attempt, capped at BACKOFF_CAP, times a jitter in [0.5, 1.5)."""
    return min(BACKOFF_CAP, BACKOFF * 2**attempt) * (0.5 + rng())


def check_address(server):
    """A server address as grpc takes it ("host:port", "[v6]:port",
    "unix:/path", or a grpc target with a scheme); ValueError otherwise (a
    host without a port would silently mean 443)."""
    if not isinstance(server, str) or not server:
        raise ValueError(f"server={server!r}: must be 'auto', 'host:port' or 'unix:/path'")
    if server.startswith("unix:") or re.match(r"^[a-z][a-z0-9+.-]*://", server):
        return server
    if not re.search(r":\d+$", server) or server.endswith("]"):
        raise ValueError(
            f"server={server!r}: no port; give 'host:port' (e.g. '{server.rstrip(':')}:50051'), 'unix:/path' or 'auto'"
        )
    return server


def load_pem(v):
    """TLS material: PEM bytes, or the path of a PEM file; None stays None."""
    if v is None or isinstance(v, (bytes, bytearray)):
        return None if v is None else bytes(v)
    with open(v, "rb") as f:
        return f.read()


def ssl_context(ca, cert, key):
    """An ssl.SSLContext for the tcp data plane from the channel's PEM material."""
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if ca is None:
        context.load_default_certs()
    if cert is not None:
        # load_cert_chain reads files: the PEMs go through a private directory.
        with tempfile.TemporaryDirectory() as d:
            paths = [os.path.join(d, n) for n in ("cert.pem", "key.pem")]
            for path, pem in zip(paths, (cert, key)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(pem)
            context.load_cert_chain(*paths)
    return context


class Connection:
    """One channel to one server. ``call`` maps failures to MurErrors (named
    by ``rename``); ``retrying`` repeats an idempotent call over a lost
    connection for up to ``reconnect_timeout`` seconds. ``clock`` and
    ``sleep`` are injectable (tests count the backoff without waiting)."""

    def __init__(
        self,
        address,
        tls=None,
        timeout=None,
        reconnect_timeout=60.0,
        clock=time.monotonic,
        sleep=time.sleep,
        rng=random.random,
    ):
        self.address = address
        self.tls = tls  # (ca, cert, key) PEM bytes, or None: plaintext
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.clock, self.sleep, self.rng = clock, sleep, rng
        self.rename = None  # message -> message, naming parameters as the user does
        self.token = None  # the session's credential (CreateSession); never leaves this object
        self.attempt = 0  # of the call retrying() runs now (0: the first)
        if tls is not None:
            ca, cert, key = tls
            self.channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(ca, key, cert), options=CHANNEL_OPTIONS
            )
        else:
            self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pbg.OptimizerStub(self.channel)
        # Step with a pre-encoded request (planes/grpc.py encodes gradients by hand).
        self.raw_step = self.channel.unary_unary(
            "/mur.v1.Optimizer/Step", request_serializer=None, response_deserializer=pb.StepReply.FromString
        )

    def metadata(self):
        """Per-session calls carry the session token (proto: authorization: Bearer)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def error(self, e: grpc.RpcError):
        return from_rpc_error(e, self.rename)

    def call(self, fn, req, timeout=None):
        try:
            return fn(req, timeout=timeout or self.timeout, metadata=self.metadata())
        except grpc.RpcError as e:
            raise self.error(e) from None

    def stream(self, fn, req):
        """A server-streaming call, read whole (errors arise while iterating)."""
        try:
            return list(fn(req, timeout=self.timeout, metadata=self.metadata()))
        except grpc.RpcError as e:
            raise self.error(e) from None

    def capabilities(self):
        """GetCapabilities, the first call: a server never reached is a
        ServerUnreachableError, not a lost connection."""
        try:
            return self.call(self.stub.GetCapabilities, pb.GetCapabilitiesRequest())
        except ConnectionLostError as e:
            raise ServerUnreachableError(
                f"cannot reach a mur server at {self.address}: {e} (is it running and listening there? "
                "server='auto' starts one)",
                e.code,
            ) from None

    def retrying(self, fn, on_lost=None):
        """fn() again on a lost connection, with backoff_delay() between tries,
        for up to reconnect_timeout seconds (a server restarting on its
        --state-dir comes back with the same sessions). Every call retried this
        way is idempotent: a step keeps its number and the server applies it
        once. ``on_lost()`` runs before each retry (e.g. to map the restarted
        server's new arena)."""
        deadline = self.clock() + self.reconnect_timeout
        attempt = 0
        while True:
            try:
                self.attempt = attempt
                if attempt and on_lost is not None:
                    on_lost()
                return fn()
            except ConnectionLostError:
                left = deadline - self.clock()
                if left <= 0:
                    raise
                self.sleep(min(left, backoff_delay(attempt, self.rng)))
                attempt += 1

    def close_session(self, session_id):
        """CloseSession, best effort (a dead server: nothing to free)."""
        try:
            self.stub.CloseSession(
                pb.CloseSessionRequest(session_id=session_id),
                metadata=self.metadata(),
                timeout=min(CLOSE_TIMEOUT, self.timeout or CLOSE_TIMEOUT),
            )
        except grpc.RpcError:
            pass

    def close(self):
        self.channel.close()
