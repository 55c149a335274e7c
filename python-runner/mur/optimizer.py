"""RemoteOptimizer: a torch.optim.Optimizer whose maths runs on a mur server.

    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adam", rule="hybrid", lr=1e-3)

Two data planes (``transport``):

- ``"shm"`` (same host, native engine): every parameter's ``p.data`` becomes
  a view of the server's shared-memory arena, so the client's weights *are*
  the server's copy. A step copies gradients into the arena (none when
  ``p.grad`` already is the arena's gradient view) and sends one small RPC;
  the server updates the parameters in place. Edits between steps (loading
  weights, masks, clamps) are what the next step starts from.
- ``"tcp"`` (a server on another host): as "grpc" below, but the tensor
  bytes travel on a plain TCP (or TLS) connection to the server's data port
  instead of inside gRPC messages (3-4x faster on loopback; dataplane.py).
- ``"grpc"`` (anywhere): each step sends every gradient (float32, or
  bfloat16 or float16 with ``wire_dtype=``) and writes the updated parameters
  back in place. Parameters edited by the user since the last step are sent
  to the server before the step, so such edits are never undone.

Hyperparameters live in ``param_groups`` as in torch: schedulers that edit
them are honoured at the next step.
"""
import inspect
import numbers
import random
from collections import defaultdict
import os
import time
import warnings

import grpc
import numpy as np
import torch
from google.protobuf import struct_pb2

from ._proto.mur.v1 import optimizer_pb2 as pb
from ._proto.mur.v1 import optimizer_pb2_grpc as pbg
from .errors import (ConnectionLostError, FailedPreconditionError, InvalidArgumentError, MurError,
                     TransportUnavailable, from_rpc_error)
from .server import LocalServer
from .dataplane import DataPlane
from .transport import Arena

F32 = pb.DTYPE_FLOAT32
BF16 = pb.DTYPE_BFLOAT16
F16 = pb.DTYPE_FLOAT16
_ELEMENT_BYTES = {F32: 4, BF16: 2, F16: 2}
# The 2-byte wire dtypes and the torch dtype a gradient is rounded to for each.
_HALF = {BF16: torch.bfloat16, F16: torch.float16}
_TRANSPORTS = ("auto", "shm", "tcp", "grpc")
_WIRE_DTYPES = {"float32": F32, "bfloat16": BF16, "float16": F16}
_RETRIES = 3
_BACKOFF = 0.1  # seconds before the first retry, doubling
_CLOSE_TIMEOUT = 10.0  # CloseSession's deadline: close() never waits long on a dead server
# torch 2.x constructor flags that choose an implementation, not the maths:
# accepted and kept in param_groups (torch does), never sent to the server.
_TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")
# Optimizers torch gives decoupled_weight_decay; mur runs Adam's as "adamw".
_DECOUPLED = ("adam", "adamw", "nadam", "radam")
# Group keys of a torch.optim state_dict that are not hyperparameters of the maths.
_TORCH_NOOP_KEYS = {"params", "maximize", "decoupled_weight_decay", "initial_lr", *_TORCH_FLAGS}
# mur's flags bridging Keras/optax (docs/frameworks.md): torch.optim has none, i.e. all off.
_BRIDGE_FLAGS = {"eps_before_correction", "eps_in_sqrt", "lr_in_momentum"}
_SGD_DEFAULT_LR = 1e-3  # torch >= 2.2's SGD default (mur's sgd has none)
_NO_COPY = ("a RemoteOptimizer holds a live server session and cannot be copied or pickled; "
            "use state_dict() / load_state_dict() to save or move its state")


def _struct(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _wire_value(k, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, (tuple, list)) and all(isinstance(x, numbers.Real) for x in v):
        return [float(x) for x in v]
    if torch.is_tensor(v) and v.numel() == 1:
        return float(v.item())
    raise TypeError(f"hyperparameter {k}: {v!r} is not a number, a bool or a pair of numbers")


def _f32_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy().tobytes()


def _f32_view(t: torch.Tensor) -> memoryview:
    """The float32 bytes of a tensor without a copy where it already is float32 CPU memory."""
    return memoryview(t.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy()).cast("B")


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


def _gradient_fields(pid: str, shape, dtype: int, data) -> list:
    """StepRequest.grads (field 3) for one gradient, encoded by hand so the
    gradient's bytes are copied once, into the message (building a protobuf
    message object with a 16 MB bytes field costs ~15 ms in Python; this
    costs one memcpy). `data` is any bytes-like object."""
    n = memoryview(data).nbytes
    dims = b"".join(_varint(d) for d in shape)
    tensor = [_field(1, len(dims)), dims, _varint(2 << 3 | 0), _varint(dtype), _field(3, n)]
    tensor_len = sum(len(x) for x in tensor) + n
    pid_b = pid.encode()
    grad = [_field(1, len(pid_b)), pid_b, _field(2, tensor_len)]
    grad_len = sum(len(x) for x in grad) + tensor_len
    return [_field(3, grad_len), *grad, *tensor, data]


def _ssl_context(ca, cert, key):
    """An ssl.SSLContext for the tcp data plane from the channel's PEM material."""
    import ssl
    import tempfile
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


def _read_only_view(data: bytes, dtype=np.float32) -> torch.Tensor:
    """A tensor over the reply's bytes with no copy. torch warns that the
    buffer is read-only; it is only ever read, so that is safe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.frombuffer(data, dtype=dtype))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns of t, flat, on the CPU (bitwise comparison)."""
    return t.detach().reshape(-1).view(torch.int32).cpu()


# Parameter dtypes the server takes: it keeps a float32 master copy of each
# (float64 parameters are computed in float32 too); the client casts.
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _raw_bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of t in its own dtype, flat, on the CPU (edit detection of
    parameters that are not float32, whose values are not the server's bits)."""
    t = t.detach().reshape(-1)
    return t.view(_INT_OF_SIZE[t.element_size()]).cpu()


def _check_param(pid, p):
    if p.is_sparse:
        raise TypeError(f"parameter {pid}: sparse parameters are not supported")
    if p.dtype not in _PARAM_DTYPES:
        raise TypeError(f"parameter {pid}: dtype {p.dtype}; mur takes float32, float16, bfloat16 and float64 "
                        "parameters (the server computes in float32)")


def _is_view_of(t, view) -> bool:
    """t is exactly `view` (same memory, shape and strides): an arena view."""
    return (t is not None and t.data_ptr() == view.data_ptr() and t.shape == view.shape
            and t.stride() == view.stride() and t.dtype == view.dtype)


class RemoteOptimizer(torch.optim.Optimizer):
    """A drop-in torch optimizer computing ``optimizer`` x ``rule`` on a mur server.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        optimizer: sgd, adam, adamw, adagrad, rmsprop, adamax, nadam, radam, adadelta, lion.
        rule: additive, multiplicative, hybrid or exp_sign.
        server: "auto" (start a local server on a private Unix socket, stopped
            by close(), at exit, or when this process dies), "host:port" or
            "unix:/path" of a running one.
        transport: "auto" (default: shared memory when the server offers it
            and this process can map its arena; else the server's tcp data
            plane when it has one (a server on another host: the tensor bytes
            on a plain TCP/TLS connection beside gRPC); else gRPC), "shm" or
            "tcp" (that one, or a TransportUnavailable error saying why) or
            "grpc" (tensors in gRPC messages only).
            ``opt.transport`` tells which one is in use. With "shm" every
            parameter's ``p.data`` is a view of the server's copy until close().
        wire_dtype: "float32", "bfloat16" or "float16": how gradients travel
            on the tcp and grpc transports. The 2-byte ones halve the bytes up
            and round each gradient first: bfloat16 keeps float32's range
            with 8 significant bits; float16 keeps 11 bits but only
            |g| <= 65504 (a larger gradient becomes infinite and the step is
            refused, as for any non-finite gradient). Ignored on the shm
            transport, which moves no bytes.
        timeout: deadline in seconds of every call to the server (None: none).
            A lost connection is retried 3 times with backoff (0.1, 0.2, 0.4 s);
            then, or at the deadline, a step raises a MurError.
        tls_ca, tls_cert, tls_key: TLS to a server started with --tls-cert
            (PEM bytes or file paths): the CA that signed the server's
            certificate (None: the system's roots), and this client's
            certificate and key for a server that requires one
            (--tls-client-ca). All None: plaintext.
        **hyperparameters: torch's names (lr, betas, eps, weight_decay,
            momentum, ...) plus lr_in, lr_out (defaults to 10 x lr) and gamma
            (hybrid; default 0.9, scheduled by mur.schedulers).
            sgd's lr defaults to 1e-3 (torch >= 2.2). torch 2.x's foreach,
            fused, capturable and differentiable are accepted no-ops
            (differentiable=True, capturable=True on a GPU: ValueError);
            maximize=True steps on -grad (p.grad keeps its sign);
            decoupled_weight_decay=True makes "adam" "adamw" (nadam, radam:
            NotImplementedError).

    Parameters may be float32, float16, bfloat16 or float64: the server keeps
    a float32 master copy of each (float64 parameters are computed in
    float32), gradients are cast to float32 on the way in, and the master is
    cast back into the parameter after each step. ``add_param_group`` works
    after creation too: the group joins the server session.

    ``opt.state`` is the server's state, torch-style, fetched on access;
    ``state_dict()`` loads into the matching torch.optim class too, and
    ``load_state_dict()`` takes a torch.optim state_dict of the same algorithm.
    A RemoteOptimizer cannot be copied or pickled (TypeError: use state_dict()).
    """

    def __new__(cls, params=None, *args, **kwargs):
        # server=[addr, addr, ...]: the parameters are sharded across those
        # servers (mur/sharded.py, docs/scale-out.md); one address: this class.
        server = kwargs.get("server", args[2] if len(args) > 2 else None)
        if cls is RemoteOptimizer and isinstance(server, (list, tuple)) and len(server) > 1:
            from .sharded import ShardedRemoteOptimizer
            return ShardedRemoteOptimizer(params, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, params, optimizer="adam", rule="hybrid", server="auto", transport="auto",
                 wire_dtype="float32", timeout=300.0, tls_ca=None, tls_cert=None, tls_key=None,
                 reconnect_timeout=60.0, **hyperparameters):
        self._local = self._channel = self._session = self._arena = self._data = None
        self._half = {}  # per parameter: its gradient as bfloat16 or float16 (wire_dtype)
        if isinstance(server, (list, tuple)):  # a list of one address (more: __new__ shards)
            if len(server) != 1 or not isinstance(server[0], str):
                raise ValueError(f"server={server!r}: a list of servers holds addresses (at least one)")
            server = server[0]
        self._token = None  # the session's credential (CreateSession); private
        if not (isinstance(reconnect_timeout, numbers.Real) and reconnect_timeout >= 0):
            raise ValueError(f"reconnect_timeout={reconnect_timeout!r}: must be a number of seconds >= 0")
        self._reconnect_timeout = float(reconnect_timeout)
        self.lane_steps = 0  # steps that went through the shm fast lane (no RPC)
        self._owner = os.getpid()
        self._views = {}
        self._maximized = set()  # this step's parameters whose group has maximize=True
        self._transport = None
        self._requested_transport = transport
        self._client_bits = {}  # parameters that are not float32: their bits when last written from the server
        if not isinstance(transport, str) or transport not in _TRANSPORTS:
            raise ValueError(f"transport={transport!r}: must be one of {', '.join(map(repr, _TRANSPORTS))}")
        if not isinstance(wire_dtype, str) or wire_dtype not in _WIRE_DTYPES:
            raise ValueError(f"wire_dtype={wire_dtype!r}: must be one of {', '.join(map(repr, _WIRE_DTYPES))}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or not timeout > 0):
            raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds or None")
        self._wire_dtype = _WIRE_DTYPES[wire_dtype]
        self._timeout = None if timeout is None else float(timeout)
        self._local = LocalServer() if server == "auto" else None
        address = self._local.address if self._local else server
        self._address = address
        # Its own connection (not grpc's process-wide subchannel pool): a dead
        # server's reconnect backoff never delays another optimizer.
        # Large frames and windows: a 16 MB gradient should not wait for
        # WINDOW_UPDATEs every 64 KB or travel in 16 KB frames.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.use_local_subchannel_pool", 1), ("grpc.http2.max_frame_size", 16777215),
                   ("grpc.http2.lookahead_bytes", 16 << 20), ("grpc.http2.bdp_probe", 1),
                   # A restarted server is found within ~2 s, not after grpc's default backoff (up to 2 min).
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000),
                   ("grpc.keepalive_time_ms", 30000), ("grpc.keepalive_timeout_ms", 10000),
                   ("grpc.keepalive_permit_without_calls", 1)]
        def pem(v):  # TLS material: PEM bytes, or the path of a PEM file
            if v is None or isinstance(v, (bytes, bytearray)):
                return None if v is None else bytes(v)
            with open(v, "rb") as f:
                return f.read()
        ca, cert, key = pem(tls_ca), pem(tls_cert), pem(tls_key)
        self._tls = (ca, cert, key) if (ca, cert, key) != (None, None, None) else None
        if (cert is None) != (key is None):
            raise ValueError("tls_cert and tls_key go together (a client certificate needs its key)")
        self._channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert), options=options)
                         if (ca, cert, key) != (None, None, None) else grpc.insecure_channel(address, options=options))
        self._stub = pbg.OptimizerStub(self._channel)
        # Step with a pre-encoded request (see _gradient_fields).
        self._raw_step = self._channel.unary_unary("/mur.v1.Optimizer/Step", request_serializer=None,
                                                   response_deserializer=pb.StepReply.FromString)
        try:
            caps = self._call(self._stub.GetCapabilities, pb.GetCapabilitiesRequest())
            self._caps = caps
            # torch 2.x's implementation flags are accepted (no-ops here); maximize
            # is done by this client; decoupled_weight_decay picks AdamW's maths.
            flags = {k: hyperparameters.pop(k) for k in (*_TORCH_FLAGS, "maximize") if k in hyperparameters}
            if "decoupled_weight_decay" in hyperparameters:
                dwd = hyperparameters.pop("decoupled_weight_decay")
                if optimizer not in _DECOUPLED:
                    raise ValueError(f"decoupled_weight_decay={dwd!r}: not an argument of {optimizer} (torch has it "
                                     f"for {', '.join(_DECOUPLED)})")
                if not isinstance(dwd, bool):
                    raise ValueError(f"decoupled_weight_decay={dwd!r}: must be True or False")
                if dwd and optimizer in ("nadam", "radam"):
                    raise NotImplementedError(
                        f"decoupled_weight_decay=True with optimizer={optimizer!r}: the mur server has no decoupled "
                        f"weight decay for {optimizer} (it has it for adam: optimizer='adamw')")
                if dwd and optimizer == "adam":
                    optimizer = "adamw"  # torch: Adam(decoupled_weight_decay=True) is AdamW
                if not dwd and optimizer == "adamw":
                    raise ValueError("decoupled_weight_decay=False with optimizer='adamw': AdamW's weight decay is "
                                     "decoupled (use optimizer='adam' for coupled L2)")
                flags["decoupled_weight_decay"] = dwd
            opt = next((o for o in caps.optimizers if o.name == optimizer), None)
            rl = next((r for r in caps.rules if r.name == rule), None)
            if opt is None:
                raise ValueError(f"optimizer={optimizer!r}: unknown (one of {', '.join(o.name for o in caps.optimizers)})")
            if rl is None:
                raise ValueError(f"rule={rule!r}: unknown (one of {', '.join(r.name for r in caps.rules)})")
            known = {h.name: h for h in list(opt.hyperparameters) + list(rl.hyperparameters)}
            self._known = set(known)
            self._opt_hypers = {h.name for h in opt.hyperparameters}
            self._all_opt_hypers = {h.name for o in caps.optimizers for h in o.hyperparameters}
            for k in hyperparameters:
                if k not in known:
                    raise ValueError(f"{k}={hyperparameters[k]!r}: not a hyperparameter of {optimizer} with the {rule} rule "
                                     f"(known: {', '.join(known)})")
            # Every hyperparameter in defaults, as torch keeps them; None means
            # "the server's default" (lr_out follows lr unless set).
            defaults = {}
            for name, h in known.items():
                which = h.default_value.WhichOneof("kind")
                if which == "number_value":
                    defaults[name] = h.default_value.number_value
                elif which == "bool_value":
                    defaults[name] = h.default_value.bool_value
                elif which == "list_value":
                    defaults[name] = tuple(v.number_value for v in h.default_value.list_value.values)
                else:
                    defaults[name] = None
            if optimizer == "sgd" and defaults.get("lr") is None:
                defaults["lr"] = _SGD_DEFAULT_LR  # as torch >= 2.2 (lr_out still follows lr)
            defaults["maximize"] = False
            defaults.update(hyperparameters)
            defaults.update(flags)
            self.optimizer_name, self.rule_name = optimizer, rule
            super().__init__(params, defaults)
            self._check_flags()
            self._create_session()
            self._transport_reason = None
            if transport in ("auto", "shm"):
                try:
                    self._open_shm()
                except TransportUnavailable as e:
                    if transport == "shm":
                        raise
                    self._transport_reason = e.reason  # "auto": gRPC, silently
            if self._arena is None and transport in ("auto", "tcp"):
                try:
                    self._open_tcp(caps, address)
                except TransportUnavailable as e:
                    if transport == "tcp":
                        raise
                    self._transport_reason = e.reason
            if self._arena is None:
                if self._wire_dtype != F32 and self._wire_dtype not in caps.dtypes:
                    raise FailedPreconditionError(
                        f"wire_dtype={wire_dtype!r}: the server at {address} does not accept {wire_dtype} gradients "
                        f"(dtypes: {', '.join(pb.DType.Name(d) for d in caps.dtypes)})")
                self._transport = "tcp" if self._data is not None else "grpc"
                for _, pid, p in self._params():
                    self._mark(pid, p)
            else:
                self._transport = "shm"
        except BaseException:
            self.close()
            raise

    def add_param_group(self, param_group):
        """torch's add_param_group; once the session exists the new group joins
        it on the server (AddParameters): the next steps update its parameters
        with its hyperparameters. A group torch would refuse, or the server
        refuses (a bad hyperparameter, a dtype it does not take), raises and
        leaves the optimizer as it was."""
        if getattr(self, "_session", None) is None:
            super().add_param_group(param_group)
            return
        self._check_open()
        n = len(self.param_groups)
        super().add_param_group(param_group)  # torch's checks and defaults (a parameter in two groups: ValueError)
        try:
            if len(self.param_groups) != n + 1:  # a torch that did not append (it always does)
                raise RuntimeError("add_param_group: torch did not add the group")
            self._check_flags()
            self._add_group_to_session(n, self.param_groups[n])
        except BaseException:
            del self.param_groups[n:]
            raise

    @torch.no_grad()
    def _add_group_to_session(self, gi, group):
        decls = [(f"g{gi}", f"p{gi}.{pi}", p) for pi, p in enumerate(group["params"])]
        for _, pid, p in decls:
            _check_param(pid, p)
        hypers = {f"g{gi}": _struct(self._group_hypers(group))}  # TypeError for a value that is not a number
        if self._arena is not None:
            self._sync_shm()  # the server moves the parameters out of the arena: with the client's edits
        total = sum(p.numel() * 4 for _, _, p in decls)
        inline = total < self._caps.max_message_bytes * 0.9
        data = {pid: _f32_bytes(p) for _, pid, p in decls}
        req = pb.AddParametersRequest(session_id=self._session, groups=hypers, params=[
            pb.ParamDecl(id=pid, name=pid, shape=list(p.shape), dtype=F32, group=g,
                         data=data[pid] if inline else b"") for g, pid, p in decls])
        self._call(self._stub.AddParameters, req)
        # The server has the parameters now: from here on the client follows.
        for _, pid, p in decls:
            self._ids[id(p)] = pid
            self._by_id[pid] = p
            self._server_bits[pid] = _read_only_view(data[pid], np.int32)
        later = data if not inline else {pid: b for pid, b in data.items() if not b}
        if later:
            self._retrying(lambda: self._import_values(later, last_step=0))
        if self._arena is not None:
            try:
                self._remap_shm()
            except TransportUnavailable as e:
                self._to_grpc()  # new parameters the arena cannot hold (on a GPU): every parameter goes by gRPC
                if self._requested_transport == "shm":
                    raise
                self._transport_reason = e.reason
        else:
            for _, pid, p in decls:
                self._mark(pid, p)

    def _check_flags(self):
        """torch 2.x's flags, per group: values torch accepts; none that would change the maths here."""
        for g in self.param_groups:
            for k in _TORCH_FLAGS:
                if not (g.get(k) is None or isinstance(g[k], bool)):
                    raise ValueError(f"{k}={g[k]!r}: must be None, False or True")
            for k in ("maximize", "decoupled_weight_decay"):
                if k in g and not isinstance(g[k], bool):
                    raise ValueError(f"{k}={g[k]!r}: must be False or True")
            if g.get("differentiable"):
                raise ValueError("differentiable=True: mur does not support differentiating through the optimizer "
                                 "step (the step runs on the server, outside autograd)")
            if g.get("capturable") and any(p.device.type != "cpu" for p in g["params"]):
                raise ValueError("capturable=True: mur does not support CUDA graph capture of the step (the step "
                                 "runs on the server); leave capturable=False")

    @property
    def transport(self):
        """The data plane in use: "shm", "tcp" or "grpc" (read-only)."""
        return self._transport

    # -- wire helpers ---------------------------------------------------------
    def _metadata(self):
        """Per-session calls carry the session token (proto: authorization: Bearer)."""
        return (("authorization", f"Bearer {self._token}"),) if self._token else None

    def _call(self, fn, req, timeout=None):
        try:
            return fn(req, timeout=timeout or self._timeout, metadata=self._metadata())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _check_replayed(self, replayed):
        """A first attempt answered "replayed": another writer of this session
        used this step number with the same request. Its result is not ours to
        take silently."""
        if replayed and getattr(self, "_attempt", 0) == 0:
            raise MurError(f"step {self._step_no} had already been applied to this session (another client or "
                           "process steps it with the same numbers); one session takes one writer")

    def _retrying(self, fn, on_lost=None):
        """fn() again on a lost connection, with exponential backoff and jitter,
        for up to reconnect_timeout seconds (a server restarting on its
        --state-dir comes back with the same sessions). Every call retried this
        way is idempotent: a step keeps its number and the server applies it
        once. ``on_lost()`` runs before each retry (e.g. to map the restarted
        server's new arena)."""
        deadline = time.monotonic() + self._reconnect_timeout
        attempt = 0
        while True:
            try:
                self._attempt = attempt
                if attempt and on_lost is not None:
                    on_lost()
                return fn()
            except ConnectionLostError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(2.0, _BACKOFF * 2 ** attempt) * random.uniform(0.5, 1.5))
                attempt += 1

    def _group_hypers(self, group):
        # Only the server's hyperparameters: schedulers add keys such as initial_lr.
        return {k: _wire_value(k, v) for k, v in group.items() if k in self._known and v is not None}

    def _params(self):
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                yield f"g{gi}", f"p{gi}.{pi}", p

    def _spec(self):
        return pb.OptimizerSpec(
            optimizer=self.optimizer_name, rule=self.rule_name,
            groups={f"g{i}": _struct(self._group_hypers(g)) for i, g in enumerate(self.param_groups)})

    def _check_open(self):
        if self._session is None:
            raise FailedPreconditionError("this RemoteOptimizer is closed")

    def _create_session(self):
        decls, total = [], 0
        for group, pid, p in self._params():
            _check_param(pid, p)
            total += p.numel() * 4
            decls.append((group, pid, p))
        inline = total < self._caps.max_message_bytes * 0.9
        data = {pid: _f32_bytes(p) for _, pid, p in decls}
        req = pb.CreateSessionRequest(spec=self._spec(), params=[
            pb.ParamDecl(id=pid, name=pid, shape=list(p.shape), dtype=F32, group=group,
                         data=data[pid] if inline else b"") for group, pid, p in decls])
        reply = self._call(self._stub.CreateSession, req)
        self._session, self._token = reply.session_id, reply.session_token
        self._ids = {id(p): pid for _, pid, p in decls}
        self._by_id = {pid: p for _, pid, p in decls}
        self._step_no = 0
        # What the server holds, as far as the client knows (gRPC transport):
        # the bits it last sent or received, and each parameter's version and
        # address right after it was written.
        self._server_bits = {pid: _read_only_view(b, np.int32) for pid, b in data.items()}
        self._marks = {}
        # Values the CreateSession did not carry: all of them for a large
        # model; a zero-element parameter's always (empty ParamDecl.data
        # means "values come later", so it would never get any).
        later = data if not inline else {pid: b for pid, b in data.items() if not b}
        if later:
            self._import_values(later, last_step=0)

    def _chunks(self, pid, slot, data: bytes, dtype=F32):
        size = _ELEMENT_BYTES[dtype]
        per = max(size, self._caps.chunk_bytes // size * size)
        total = len(data) // size
        mv = memoryview(data)
        off = 0
        while True:
            part = mv[off:off + per]
            yield pb.TensorChunk(param_id=pid, slot=slot, offset=off // size, total_elements=total, dtype=dtype,
                                 data=bytes(part))
            off += len(part)
            if off >= len(data):
                return

    def _import_values(self, values, last_step):
        """ImportState of parameter values only ({pid: float32 bytes}).
        last_step=0 keeps the session's step counter and optimizer state."""
        def gen():
            yield pb.StateFrame(header=pb.StateHeader(session_id=self._session, last_step=last_step))
            for pid, data in values.items():
                for c in self._chunks(pid, "", data):
                    yield pb.StateFrame(chunk=c)
        self._call(self._stub.ImportState, gen())

    # -- the shared-memory transport -----------------------------------------
    def _request_arena(self, unavailable):
        """The session's arena, mapped (OpenArena), and each parameter's
        (index, parameter view, gradient view) in it; TransportUnavailable when
        a parameter is not in CPU memory, the arena does not match the session,
        or the server answers one of the status codes `unavailable` (the shm
        transport is not possible here)."""
        for _, pid, p in self._params():
            if p.device.type != "cpu":
                raise TransportUnavailable(f"parameter {pid} is on {p.device}; the arena is CPU memory")
        try:
            info = self._call(self._stub.OpenArena, pb.OpenArenaRequest(session_id=self._session))
        except MurError as e:
            if e.code in unavailable:
                raise TransportUnavailable(f"OpenArena: {e}") from None
            raise
        arena = Arena.open(info)
        try:
            views = {}
            for _, pid, p in self._params():
                i = arena.index.get(pid)
                if i is None or arena.param(i).numel() != p.numel():
                    raise TransportUnavailable(f"the arena does not match the session: parameter {pid} "
                                               f"({p.numel()} elements) is {'absent' if i is None else 'resized'}")
                views[pid] = (i, arena.param(i).view(p.shape), arena.grad(i).view(p.shape))
        except BaseException:
            arena.close()
            raise
        return arena, views

    def _open_shm(self):
        if "shm" not in self._caps.transports:
            raise TransportUnavailable(
                f"the server at {self._address} does not offer it (transports: {', '.join(self._caps.transports)}; "
                f"its engine is '{self._caps.backend}', shared memory needs the native engine)")
        arena, views = self._request_arena((grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED))
        # From here on the client's float32 parameters are the server's copy;
        # the others keep their own memory, written from the arena after each step.
        self._arena, self._views = arena, views
        self._lane_key = None  # the hyperparameters the server's fast lane holds, once a step set them
        for _, pid, p in self._params():
            if p.dtype == torch.float32:
                p.data = views[pid][1]
            else:
                self._mark_mixed(pid, p)
        self._server_bits = {}  # the gRPC transport's bookkeeping is not needed

    def _sync_shm(self):
        """Points every parameter back at its arena view, copying the values of
        one the user rebound (``p.data = t``) into the arena first."""
        for _, pid, p in self._params():
            if pid not in self._views:
                continue  # a group being added (add_param_group): not in any arena yet
            _, pv, _ = self._views[pid]
            if pv.numel() == 0 or _is_view_of(p.data, pv):
                continue
            if p.dtype in _PARAM_DTYPES and p.dtype != torch.float32 and p.device.type == "cpu" and p.shape == pv.shape:
                # Not float32: the arena holds the float32 master; an edit of the
                # parameter (its bits changed since the server's value was written
                # into it) replaces the master.
                if not self._mixed_unchanged(pid, p):
                    pv.copy_(p.detach())
                    self._mark_mixed(pid, p)
                continue
            if p.shape != pv.shape:
                raise ValueError(f"parameter {pid}: shape {tuple(p.shape)}, but the session was created with "
                                 f"{tuple(pv.shape)}")
            if p.device.type != "cpu" or p.dtype != torch.float32:
                raise ValueError(f"parameter {pid} became a {p.dtype} tensor on {p.device} after the optimizer was "
                                 "created on the shm transport, whose parameters are float32 CPU memory "
                                 "(use transport='grpc')")
            pv.copy_(p.detach())
            p.data = pv

    def _reattach_shm(self):
        """After a lost connection: if the server restarted (its arena went with
        its process), map its new arena, which holds the session's recovered
        values; carry this step's gradients over; point the parameters at it."""
        try:
            info = self._call(self._stub.OpenArena, pb.OpenArenaRequest(session_id=self._session))
        except MurError as e:
            if e.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                raise TransportUnavailable(f"the restarted server offers no shared memory: {e}") from None
            raise
        if bytes(info.token) == self._arena.token:
            return  # the same server: only the connection was lost
        old, old_views = self._arena, self._views
        arena = Arena.open(info)
        views = {}
        for _, pid, p in self._params():
            i = arena.index[pid]
            views[pid] = (i, arena.param(i).view(p.shape), arena.grad(i).view(p.shape))
            _, _, og = old_views[pid]
            if og.numel():
                views[pid][2].copy_(og)  # this step's gradient
            if p.grad is not None and _is_view_of(p.grad, og):
                p.grad = views[pid][2]
            if p.dtype == torch.float32:
                p.data = views[pid][1]
        self._arena, self._views, self._lane_key = arena, views, None
        old.close()

    def _remap_shm(self):
        """After AddParameters: the server gave its arena up (an arena cannot
        grow) and OpenArena makes one covering every parameter, holding the
        server's values. The parameters (and gradients) viewing the old arena
        move to the new one; the old mapping goes when nothing views it."""
        arena, views = self._request_arena((grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED))
        old, old_views = self._arena, self._views
        for _, pid, p in self._params():
            _, pv, gv = views[pid]
            og = old_views.get(pid, (None, None, None))[2]
            if og is not None and p.grad is not None and og.numel() and _is_view_of(p.grad, og):
                gv.copy_(og)  # accumulated gradients come along
                p.grad = gv
            if p.dtype == torch.float32:
                p.data = pv
            else:
                self._mark_mixed(pid, p)
        self._arena, self._views, self._lane_key = arena, views, None
        old.close()

    def _to_grpc(self):
        """Leaves shared memory for the gRPC transport (the arena is gone on the
        server): the parameters get their own memory, holding the server's values."""
        self._detach_shm()
        self._views = {}
        self._arena.close()
        self._arena = None
        self._transport = "grpc"
        for _, pid, p in self._params():
            if p.dtype == torch.float32:
                self._server_bits[pid] = _bits(p).clone()
            self._mark(pid, p)

    def _detach_shm(self):
        """Gives every parameter (and gradient) that views the arena its own copy."""
        for _, pid, p in self._params():
            _, pv, gv = self._views.get(pid, (None, None, None))
            if pv is None or pv.numel() == 0:
                continue
            if _is_view_of(p.data, pv):
                p.data = pv.clone()
            if p.grad is not None and _is_view_of(p.grad, gv):
                p.grad = gv.clone()

    def _step_shm(self, grads, overrides):
        self._sync_shm()
        indices, flipped = [], []
        try:
            for pid, p in grads:
                i, _, gv = self._views[pid]
                if gv.numel() and not _is_view_of(p.grad, gv):
                    if p.grad.shape != gv.shape:
                        raise ValueError(f"parameter {pid}: gradient of shape {tuple(p.grad.shape)}, "
                                         f"parameter is {tuple(gv.shape)}")
                    if pid in self._maximized:
                        gv.copy_(p.grad).neg_()  # p.grad stays the user's own tensor, its sign untouched
                    else:
                        gv.copy_(p.grad)  # cast to float32 for a parameter that is not float32
                        if p.grad.dtype == torch.float32 and p.dtype == torch.float32:
                            p.grad = gv  # backward accumulates here from now on (zero_grad(set_to_none=False))
                elif gv.numel() and pid in self._maximized:
                    gv.neg_()  # p.grad is the arena's gradient: negated for the step, restored after it
                    flipped.append(pid)
                indices.append(i)
            self._step_shm_rung(indices, overrides)
            for pid, p in grads:  # parameters that are not float32 take the new master values, cast
                if p.dtype != torch.float32:
                    p.copy_(self._views[pid][1])
                    self._mark_mixed(pid, p)
        finally:
            for pid in flipped:  # negation is exact: the user's p.grad is bit for bit what it was
                self._views[pid][2].neg_()

    def _step_shm_rung(self, indices, overrides):
        # The fast lane when the server armed it and the hyperparameters are
        # the ones it holds (a scheduler's change goes by RPC, with overrides).
        lane = self._arena.lane
        key = [sorted(self._group_hypers(g).items()) for g in self.param_groups]
        replay_ok = False
        if lane is not None and key == self._lane_key and lane.armed(len(indices)):
            status = lane.step(self._step_no, indices, wait_s=min(2.0, self._timeout or 2.0))
            if status == lane.APPLIED:
                self.lane_steps += 1
                return
            replay_ok = status == lane.NO_ANSWER  # the lane may have applied it after all
        req = pb.StepRequest(session_id=self._session, step=self._step_no, group_overrides=overrides,
                             arena_grads=indices)
        try:
            reply = self._retrying(lambda: self._call(self._stub.Step, req), on_lost=self._reattach_shm)
            if not replay_ok:
                self._check_replayed(reply.replayed)
        except FailedPreconditionError as e:
            # A server restarted on its --state-dir before this step: the session
            # is back but its arena went with the old process.
            if "has no arena" not in str(e):
                raise
            self._reattach_shm()
            self._retrying(lambda: self._call(self._stub.Step, req), on_lost=self._reattach_shm)
        self._lane_key = key

    # -- the gRPC transport ---------------------------------------------------
    def _mark(self, pid, p):
        self._marks[pid] = (p._version, p.data_ptr())
        if p.dtype != torch.float32:
            self._mark_mixed(pid, p)

    def _mark_mixed(self, pid, p):
        """A parameter that is not float32 was just written from the server's
        float32 master (or sent to it): its bits now, to tell an edit later."""
        self._client_bits[pid] = (p.dtype, _raw_bits(p).clone())

    def _mixed_unchanged(self, pid, p):
        mark = self._client_bits.get(pid)
        return mark is not None and mark[0] == p.dtype and torch.equal(_raw_bits(p), mark[1])

    def _edited(self):
        """Parameters whose values differ from what the server holds: rebound,
        written in place (version bumped), or written through ``p.data`` or
        numpy (no version bump: compared bit for bit)."""
        out = {}
        for _, pid, p in self._params():
            if p.dtype != torch.float32:
                # The server's float32 master is not these bits: compared with
                # what the parameter held when the server's value was written in.
                if not self._mixed_unchanged(pid, p):
                    out[pid] = p
            elif (self._marks.get(pid) != (p._version, p.data_ptr())
                    or not torch.equal(_bits(p), self._server_bits[pid])):
                out[pid] = p
        return out

    def _push_edits(self):
        """Sends parameters the user edited since the server last wrote them,
        so the next step starts from the edit (ImportState, slot "" only)."""
        edited = self._edited()
        if not edited:
            return
        data = {pid: _f32_bytes(p) for pid, p in edited.items()}
        self._retrying(lambda: self._import_values(data, last_step=0))
        for pid, p in edited.items():
            self._server_bits[pid] = _read_only_view(data[pid], np.int32)
            self._mark(pid, p)

    def _open_tcp(self, caps, address):
        """The tcp data plane (proto: DataStepHeader) when the server offers
        one and it answers, at the host this client reached the server at."""
        if "tcp" not in caps.transports or not caps.data_port:
            raise TransportUnavailable(f"the server at {address} has no data port (started with --socket or "
                                       "--data-port off)", "tcp")
        host = address.rsplit(":", 1)[0] if ":" in address and not address.startswith("unix:") else None
        if host is None:
            raise TransportUnavailable(f"{address} is not a host:port address", "tcp")
        host = host.strip("[]")  # an IPv6 literal
        context = None
        if self._tls is not None:
            context = _ssl_context(*self._tls)
        data = DataPlane(host, caps.data_port, timeout=self._timeout, ssl_context=context)
        try:
            data.connect()
        except MurError as e:
            raise TransportUnavailable(str(e), "tcp") from None
        self._data = data

    def _refind_tcp(self):
        """Before a retry: a server restarted (on its --state-dir) may listen
        on another data port; GetCapabilities says which."""
        caps = self._call(self._stub.GetCapabilities, pb.GetCapabilitiesRequest())
        if "tcp" not in caps.transports or not caps.data_port:
            raise FailedPreconditionError(f"the server at {self._address} came back without a data port "
                                          "(--data-port off?): create the optimizer again to use gRPC")
        self._data.close()
        self._data.address = (self._data.address[0], caps.data_port)

    def _half_view(self, pid, g):
        """g rounded to the wire's 2-byte dtype (round to nearest even, torch's
        conversion) in a buffer kept per parameter, as bytes: a fresh buffer
        every step costs more in page faults than the conversion."""
        half = _HALF[self._wire_dtype]
        scratch = self._half.get(pid)
        if scratch is None or scratch.shape != g.shape or scratch.dtype != half:
            scratch = self._half[pid] = torch.empty(g.shape, dtype=half)
        scratch.copy_(g.detach())
        return memoryview(scratch.view(torch.int16).numpy()).cast("B")

    def _step_tcp(self, payload, overrides, dtype):
        request = pb.StepRequest(session_id=self._session, step=self._step_no, group_overrides=overrides,
                                 grads=[pb.Gradient(param_id=pid, grad=pb.Tensor(shape=shape, dtype=dtype))
                                        for pid, shape, _ in payload])
        reply, values = self._data.step(self._token, request, [b for _, _, b in payload])
        self._check_replayed(reply.replayed)
        return values

    def _step_grpc(self, grads, overrides):
        self._push_edits()
        dtype = self._wire_dtype
        encode = self._half_view if dtype in _HALF else (lambda pid, g: _f32_view(g))
        payload = [(pid, list(p.shape), encode(pid, p.grad.neg() if pid in self._maximized else p.grad))
                   for pid, p in grads]
        size = sum(memoryview(b).nbytes for _, _, b in payload)
        if self._data is not None:
            values = self._retrying(lambda: self._step_tcp(payload, overrides, dtype), on_lost=self._refind_tcp)
        elif size < self._caps.max_message_bytes * 0.9:
            values = self._retrying(lambda: self._step_unary(payload, overrides, dtype))
        else:
            values = self._retrying(lambda: self._step_stream(payload, overrides, dtype))
        for pid, data in values.items():
            p = self._by_id[pid]
            v = data if torch.is_tensor(data) else _read_only_view(data)  # tcp: float32 tensors already
            p.copy_(v.view(p.shape))
            self._server_bits[pid] = v.view(torch.int32)
            self._mark(pid, p)

    def _step_unary(self, payload, overrides, dtype):
        # The request's small fields through protobuf, the gradients appended by
        # hand: a message is the concatenation of its fields.
        head = pb.StepRequest(session_id=self._session, step=self._step_no, group_overrides=overrides).SerializeToString()
        req = b"".join([head, *(x for pid, shape, b in payload for x in _gradient_fields(pid, shape, dtype, b))])
        reply = self._call(self._raw_step, req)
        self._check_replayed(reply.replayed)
        return {v.param_id: v.value.data for v in reply.params}

    def _step_stream(self, payload, overrides, dtype):
        def frames():
            yield pb.StepStreamRequest(begin=pb.StepBegin(session_id=self._session, step=self._step_no, group_overrides=overrides))
            for pid, _, b in payload:
                for c in self._chunks(pid, "", b, dtype):
                    yield pb.StepStreamRequest(grad=c)
            yield pb.StepStreamRequest(end=pb.StepEnd())
        parts = {}
        try:
            for r in self._stub.StepStream(frames(), timeout=self._timeout, metadata=self._metadata()):
                if r.HasField("param"):
                    parts.setdefault(r.param.param_id, []).append(r.param.data)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return {pid: b"".join(chunks) for pid, chunks in parts.items()}

    # -- the step -------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        self._check_open()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads, self._maximized = [], set()
        for group, pid, p in self._params():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise TypeError(f"parameter {pid}: sparse gradients are not supported")
            if p.numel() == 0:  # nothing to update (and the server's native engine refuses empty inline tensors)
                continue
            grads.append((pid, p))
            if self.param_groups[int(group[1:])].get("maximize"):
                self._maximized.add(pid)  # the server is sent -grad (torch's maximize)
        if not grads:
            return loss
        self._step_no += 1  # a retry below keeps it: the server applies a step once
        overrides = {f"g{i}": _struct(self._group_hypers(g)) for i, g in enumerate(self.param_groups)}
        if self._arena is not None:
            self._step_shm(grads, overrides)
        else:
            self._step_grpc(grads, overrides)
        return loss

    @torch.no_grad()
    def _validate_step(self):
        """Phase 1 of a step across servers (mur/sharded.py): the server runs
        every check of the step that step() would send next (its number, the
        hyperparameters, the gradients' ids, shapes and finiteness) and applies
        nothing; raises as that step would. On shm the gradients are copied
        into the arena first (step() then finds them there)."""
        self._check_open()
        grads = [(pid, p) for _, pid, p in self._params() if p.grad is not None and p.numel() > 0]
        if not grads:
            return
        for pid, p in grads:
            if p.grad.is_sparse:
                raise TypeError(f"parameter {pid}: sparse gradients are not supported")
        overrides = {f"g{i}": _struct(self._group_hypers(g)) for i, g in enumerate(self.param_groups)}
        number = self._step_no + 1
        if self._arena is not None:
            self._sync_shm()
            indices = []
            for pid, p in grads:
                i, _, gv = self._views[pid]
                if gv.numel() and not _is_view_of(p.grad, gv):
                    if p.grad.shape != gv.shape:
                        raise ValueError(f"parameter {pid}: gradient of shape {tuple(p.grad.shape)}, "
                                         f"parameter is {tuple(gv.shape)}")
                    gv.copy_(p.grad)  # finiteness does not depend on the sign (maximize): step() negates later
                indices.append(i)
            req = pb.StepRequest(session_id=self._session, step=number, group_overrides=overrides,
                                 arena_grads=indices, validate_only=True)
            try:
                self._retrying(lambda: self._call(self._stub.Step, req), on_lost=self._reattach_shm)
            except FailedPreconditionError as e:
                if "has no arena" not in str(e):  # a server restarted on --state-dir: map its new arena
                    raise
                self._reattach_shm()
                self._retrying(lambda: self._call(self._stub.Step, req), on_lost=self._reattach_shm)
            return
        # tcp and grpc: the gradients are checked here as the server would
        # check them (each shape, and the finiteness of the very values it
        # would receive: bfloat16-rounded ones with wire_dtype="bfloat16"), and
        # the server checks the rest (the step number, the hyperparameters)
        # without them, so that phase 2 uploads them once, not twice.
        for pid, p in grads:
            if p.grad.shape != p.shape:
                raise ValueError(f"parameter {pid}: gradient of shape {tuple(p.grad.shape)}, "
                                 f"parameter is {tuple(p.shape)}")
            sent = p.grad.detach().reshape(-1).to(_HALF.get(self._wire_dtype, torch.float32))
            if not bool(torch.isfinite(sent).all()):
                k = int((~torch.isfinite(sent)).nonzero()[0])
                raise InvalidArgumentError(f"grads '{pid}': element {k} is {float(sent[k])} "
                                           f"(must be finite) [INVALID_ARGUMENT]")
        req = pb.StepRequest(session_id=self._session, step=number, group_overrides=overrides,
                             validate_only=True).SerializeToString()
        self._retrying(lambda: self._call(self._raw_step, req))

    # -- checkpoints ----------------------------------------------------------
    @torch.no_grad()
    def _sync(self):
        """Makes the server's parameters the client's (before an export)."""
        if self._arena is not None:
            self._sync_shm()
        else:
            self._push_edits()

    def _export(self):
        """The session's checkpoint (StateFrames), after syncing the client's edits."""
        self._check_open()
        self._sync()
        try:
            return list(self._call(self._stub.ExportState, pb.ExportStateRequest(session_id=self._session)))
        except grpc.RpcError as e:  # raised while iterating the stream
            raise from_rpc_error(e) from None

    def _torch_state(self, frames):
        """A checkpoint as torch keeps optimizer state: {param: {"step": tensor(float),
        slot: tensor shaped like param (a one-element slot: 0-dim), ...}} with the
        slot names the server exports ("exp_avg", ..., rule slots as "rule.x")."""
        header = frames[0].header if frames and frames[0].HasField("header") else pb.StateHeader()
        steps = {c.param_id: c.steps for c in header.step_counts}
        parts = {}
        for f in frames:
            if f.HasField("chunk") and f.chunk.slot and f.chunk.param_id in self._by_id:
                parts.setdefault(f.chunk.param_id, {}).setdefault(f.chunk.slot, []).append(f.chunk.data)
        state = defaultdict(dict)
        for pid, p in self._by_id.items():
            slots = parts.get(pid, {})
            if not slots and not steps.get(pid):
                continue  # never stepped: torch has no state for it either
            st = {"step": torch.tensor(float(steps.get(pid, 0)))}
            for slot, chunks in slots.items():
                t = torch.from_numpy(np.frombuffer(b"".join(chunks), dtype=np.float32).copy())
                t = t.view(p.shape) if t.numel() == p.numel() else t.reshape(()) if t.numel() == 1 else t
                st[slot] = t.to(device=p.device)
            state[p] = st
        return state

    @property
    def state(self):
        """The optimizer state as torch shows it, fetched from the server on
        every access (one ExportState): ``opt.state[p]["exp_avg"]``. A copy:
        writing to it changes nothing (use load_state_dict)."""
        d = self.__dict__
        if d.get("_state_cache") is not None:
            return d["_state_cache"]
        if d.get("_session") is None:  # before the session exists, or closed: torch's own (empty) dict
            return d.setdefault("_local_state", defaultdict(dict))
        return self._torch_state(self._export())

    @state.setter
    def state(self, value):
        self.__dict__["_local_state"] = value  # torch's Optimizer.__init__; the server's state is the truth

    def state_dict(self):
        """torch's state_dict with the server's state as torch-style "state"
        entries (so the matching torch.optim class can load it, and state_dict
        hooks see it), plus "mur": the server's checkpoint, which is what
        load_state_dict restores bit for bit."""
        frames = self._export() if self._session is not None else None
        self.__dict__["_state_cache"] = self._torch_state(frames) if frames is not None else None
        try:
            sd = super().state_dict()
        finally:
            self.__dict__["_state_cache"] = None
        self._check_open()
        sd["mur"] = {"frames": [f.SerializeToString() for f in frames], "step": self._step_no}
        return sd

    def _load_groups(self, groups):
        """torch's load of param_groups, keeping mur's own keys (lr_in, lr_out,
        gamma, ...) that a torch.optim state_dict does not carry."""
        old = self.param_groups
        super().load_state_dict({"state": {}, "param_groups": groups})
        for o, n in zip(old, self.param_groups):
            for k, v in o.items():
                n.setdefault(k, v)

    def _check_torch_algorithm(self, state_dict):
        """A torch.optim state_dict loads only into the same algorithm: its
        groups have exactly this optimizer's hyperparameters (beside torch's
        implementation flags)."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: {len(groups) if isinstance(groups, (list, tuple)) else 'no'} "
                             f"param_groups, this optimizer has {len(self.param_groups)}")
        for i, (g, ours) in enumerate(zip(groups, self.param_groups)):
            if len(g.get("params", ())) != len(ours["params"]):
                raise ValueError(f"load_state_dict: param_groups[{i}] has {len(g.get('params', ()))} parameters, "
                                 f"this optimizer's has {len(ours['params'])}")
            keys = set(g) - _TORCH_NOOP_KEYS
            foreign = sorted((keys & self._all_opt_hypers) - self._opt_hypers)
            missing = sorted(self._opt_hypers - keys - _BRIDGE_FLAGS)
            # A torch state_dict has torch's formulas: it cannot load where a bridging flag is on.
            bridged = sorted(k for k in _BRIDGE_FLAGS & self._opt_hypers if k not in g and ours.get(k))
            dwd = g.get("decoupled_weight_decay")
            wrong_dwd = isinstance(dwd, bool) and dwd != (self.optimizer_name == "adamw")
            if foreign or missing or wrong_dwd or bridged:
                why = "; ".join(x for x in (f"it has {', '.join(foreign)}" if foreign else "",
                                            f"it lacks {', '.join(missing)}" if missing else "",
                                            f"this optimizer sets {', '.join(f'{k}=True' for k in bridged)}, which "
                                            "torch.optim does not have" if bridged else "",
                                            f"decoupled_weight_decay={dwd}" if wrong_dwd else "") if x)
                raise ValueError(f"load_state_dict: param_groups[{i}] is not the state_dict of a "
                                 f"{self.optimizer_name} optimizer ({why}); a torch.optim state_dict loads only into "
                                 f"the RemoteOptimizer of the same algorithm")

    def _import_torch_state(self, state_dict):
        """torch.optim per-parameter state -> ImportState slots and step counts
        (all or nothing: the server checks every slot against this optimizer)."""
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        pids = dict(zip(saved, (pid for _, pid, _ in self._params())))
        counts, tensors = [], []
        for key, st in state_dict.get("state", {}).items():
            if key not in pids:
                raise ValueError(f"load_state_dict: state for parameter {key!r}, which no param_group lists")
            pid = pids[key]
            for slot, v in st.items():
                if slot == "step":
                    n = v.item() if torch.is_tensor(v) else v
                    if not isinstance(n, numbers.Real) or n < 0 or n != int(n):
                        raise ValueError(f"load_state_dict: state[{key!r}]['step'] = {v!r}: not a step count")
                    counts.append(pb.ParamStepCount(param_id=pid, steps=int(n)))
                elif torch.is_tensor(v):
                    tensors.append((pid, slot, _f32_bytes(v)))
                elif v is not None:
                    raise ValueError(f"load_state_dict: state[{key!r}][{slot!r}] = {v!r}: not a tensor")

        def gen():  # last_step=0: the client's step numbering goes on
            yield pb.StateFrame(header=pb.StateHeader(session_id=self._session, step_counts=counts, last_step=0))
            for pid, slot, data in tensors:
                for c in self._chunks(pid, slot, data):
                    yield pb.StateFrame(chunk=c)
        self._call(self._stub.ImportState, gen())

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """Loads a RemoteOptimizer's state_dict (its "mur" checkpoint, bit for
        bit) or a torch.optim state_dict of the same algorithm (its moments,
        buffers and step counts become the server's state)."""
        mur = state_dict.get("mur")
        if mur is None:
            self._check_open()
            self._check_torch_algorithm(state_dict)
            self._import_torch_state(state_dict)
            self._load_groups(state_dict["param_groups"])
            return
        self._load_groups(state_dict["param_groups"])
        self._check_open()
        frames = [pb.StateFrame.FromString(b) for b in mur["frames"]]
        header = frames[0].header
        header.session_id = self._session
        header.spec.CopyFrom(self._spec())
        if self._arena is not None:
            self._sync_shm()  # parameters view the arena, which the import writes

        def gen():
            yield from frames
        self._call(self._stub.ImportState, gen())
        self._step_no = mur["step"]
        if self._arena is not None:
            for _, pid, p in self._params():  # parameters that are not float32 take the imported values
                if p.dtype != torch.float32:
                    p.copy_(self._views[pid][1])
                    self._mark_mixed(pid, p)
        if self._arena is None:
            # The checkpoint's parameter values are the server's now: the
            # client's parameters take them too, as they do through the arena.
            parts = {}
            for f in frames:
                if f.HasField("chunk") and f.chunk.slot == "" and f.chunk.param_id in self._by_id:
                    parts.setdefault(f.chunk.param_id, []).append(f.chunk.data)
            for pid, chunks in parts.items():
                p, data = self._by_id[pid], b"".join(chunks)
                p.copy_(_read_only_view(data).view(p.shape))
                self._server_bits[pid] = _read_only_view(data, np.int32)
                self._mark(pid, p)

    # -- lifetime -------------------------------------------------------------
    def close(self):
        """Frees the server-side session (and stops a server started by "auto").

        With the shm transport the parameters first get their own memory,
        holding the last values, so the model keeps working after close()."""
        try:
            if getattr(self, "_arena", None) is not None:
                try:
                    with torch.no_grad():
                        self._detach_shm()
                finally:
                    self._views = {}
                    self._arena.close()
                    self._arena = None
            if getattr(self, "_data", None) is not None:
                self._data.close()
                self._data = None
            if getattr(self, "_session", None) is not None:
                try:
                    self._stub.CloseSession(pb.CloseSessionRequest(session_id=self._session), metadata=self._metadata(),
                                            timeout=min(_CLOSE_TIMEOUT, self._timeout or _CLOSE_TIMEOUT))
                except grpc.RpcError:
                    pass
                self._session = None
            if getattr(self, "_channel", None) is not None:
                self._channel.close()
                self._channel = None
        finally:
            if getattr(self, "_local", None) is not None:
                self._local.stop()
                self._local = None

    def __reduce_ex__(self, protocol):
        raise TypeError(_NO_COPY)  # pickle, copy.copy, copy.deepcopy

    def __deepcopy__(self, memo):
        raise TypeError(_NO_COPY)

    def __del__(self):
        if getattr(self, "_owner", None) != os.getpid():
            return  # a fork()ed child's copy: the session is its parent's
        try:
            self.close()
        except Exception:
            pass


# inspect.signature(RemoteOptimizer) shows __init__'s arguments, not __new__'s dispatch.
RemoteOptimizer.__new__.__signature__ = inspect.signature(RemoteOptimizer.__init__)

# torch.compile / dynamo never traces into the step (gRPC, protobuf, shared
# memory): it runs eagerly, a graph break for a compiled caller.
if hasattr(torch, "compiler") and hasattr(torch.compiler, "disable"):
    try:
        RemoteOptimizer.step = torch.compiler.disable(
            RemoteOptimizer.step, reason="mur's RemoteOptimizer.step talks to a server; it always runs eagerly "
                                         "(fullgraph=True cannot include it)")
    except TypeError:  # a torch.compiler.disable without reason=
        RemoteOptimizer.step = torch.compiler.disable(RemoteOptimizer.step)

__all__ = ["RemoteOptimizer", "MurError"]
