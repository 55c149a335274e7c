"""RemoteOptimizer: a torch.optim.Optimizer whose maths runs on a mur server.

    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adam", rule="hybrid", lr=1e-3)

Each step sends every gradient (float32) to the server and writes the updated
parameters back in place. Hyperparameters live in ``param_groups`` as in
torch: schedulers that edit them are honoured at the next step.
"""
import numbers
import warnings

import grpc
import numpy as np
import torch
from google.protobuf import struct_pb2

from ._proto.mur.v1 import optimizer_pb2 as pb
from ._proto.mur.v1 import optimizer_pb2_grpc as pbg
from .errors import ConnectionLostError, MurError, from_rpc_error
from .server import LocalServer

F32 = pb.DTYPE_FLOAT32
_RETRIES = 3


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


def _read_only_view(data: bytes) -> torch.Tensor:
    """A float32 tensor over the reply's bytes with no copy. torch warns that
    the buffer is read-only; it is only ever read (by copy_), so that is safe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32))


class RemoteOptimizer(torch.optim.Optimizer):
    """A drop-in torch optimizer computing ``optimizer`` x ``rule`` on a mur server.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        optimizer: sgd, adam, adamw, adagrad, rmsprop, adamax, nadam, radam, adadelta, lion.
        rule: additive, multiplicative, hybrid or exp_sign.
        server: "auto" (start a local server, stopped by close() or at exit)
            or "host:port" of a running one.
        **hyperparameters: torch's names (lr, betas, eps, weight_decay,
            momentum, ...) plus lr_in, lr_out (defaults to lr) and gamma.
    """

    def __init__(self, params, optimizer="adam", rule="hybrid", server="auto", **hyperparameters):
        self._local = LocalServer() if server == "auto" else None
        address = self._local.address if self._local else server
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._stub = pbg.OptimizerStub(self._channel)
        self._session = None
        try:
            caps = self._call(self._stub.GetCapabilities, pb.GetCapabilitiesRequest())
            self._caps = caps
            opt = next((o for o in caps.optimizers if o.name == optimizer), None)
            rl = next((r for r in caps.rules if r.name == rule), None)
            if opt is None:
                raise ValueError(f"optimizer={optimizer!r}: unknown (one of {', '.join(o.name for o in caps.optimizers)})")
            if rl is None:
                raise ValueError(f"rule={rule!r}: unknown (one of {', '.join(r.name for r in caps.rules)})")
            known = {h.name: h for h in list(opt.hyperparameters) + list(rl.hyperparameters)}
            self._known = set(known)
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
            defaults.update(hyperparameters)
            self.optimizer_name, self.rule_name = optimizer, rule
            super().__init__(params, defaults)
            self._create_session()
        except BaseException:
            self.close()
            raise

    # -- wire helpers ---------------------------------------------------------
    def _call(self, fn, req, **kw):
        try:
            return fn(req, **kw)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

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

    def _create_session(self):
        decls, total = [], 0
        for group, pid, p in self._params():
            if p.dtype != torch.float32:
                raise TypeError(f"parameter {pid}: dtype {p.dtype}; mur keeps float32 parameters")
            if p.is_sparse:
                raise TypeError(f"parameter {pid}: sparse parameters are not supported")
            total += p.numel() * 4
            decls.append((group, pid, p))
        inline = total < self._caps.max_message_bytes * 0.9
        req = pb.CreateSessionRequest(spec=self._spec(), params=[
            pb.ParamDecl(id=pid, name=pid, shape=list(p.shape), dtype=F32, group=group,
                         data=_f32_bytes(p) if inline else b"") for group, pid, p in decls])
        self._session = self._call(self._stub.CreateSession, req).session_id
        self._ids = {id(p): pid for _, pid, p in decls}
        self._by_id = {pid: p for _, pid, p in decls}
        self._step_no = 0
        if not inline:
            self._import([], {pid: p for _, pid, p in decls}, last_step=0)

    def _chunks(self, pid, slot, data: bytes):
        per = max(4, self._caps.chunk_bytes // 4 * 4)
        total = len(data) // 4
        mv = memoryview(data)
        off = 0
        while True:
            part = mv[off:off + per]
            yield pb.TensorChunk(param_id=pid, slot=slot, offset=off // 4, total_elements=total, dtype=F32, data=bytes(part))
            off += len(part)
            if off >= len(data):
                return

    def _import(self, frames, params, last_step):
        def gen():
            yield pb.StateFrame(header=pb.StateHeader(session_id=self._session, last_step=last_step))
            for pid, p in params.items():
                for c in self._chunks(pid, "", _f32_bytes(p)):
                    yield pb.StateFrame(chunk=c)
            yield from frames
        self._call(self._stub.ImportState, gen())

    # -- the step -------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = []
        for _, pid, p in self._params():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise TypeError(f"parameter {pid}: sparse gradients are not supported")
            grads.append((pid, p))
        if not grads:
            return loss
        self._step_no += 1
        overrides = {f"g{i}": _struct(self._group_hypers(g)) for i, g in enumerate(self.param_groups)}
        payload = [(pid, list(p.shape), _f32_bytes(p.grad)) for pid, p in grads]
        size = sum(len(b) for _, _, b in payload)
        for attempt in range(_RETRIES + 1):
            try:
                if size < self._caps.max_message_bytes * 0.9:
                    values = self._step_unary(payload, overrides)
                else:
                    values = self._step_stream(payload, overrides)
                break
            except ConnectionLostError:
                # The same step number again: the server applies it once.
                if attempt == _RETRIES:
                    raise
        for pid, data in values.items():
            p = self._by_id[pid]
            p.copy_(_read_only_view(data).view(p.shape))
        return loss

    def _step_unary(self, payload, overrides):
        req = pb.StepRequest(session_id=self._session, step=self._step_no, group_overrides=overrides, grads=[
            pb.Gradient(param_id=pid, grad=pb.Tensor(shape=shape, dtype=F32, data=b)) for pid, shape, b in payload])
        reply = self._call(self._stub.Step, req)
        return {v.param_id: v.value.data for v in reply.params}

    def _step_stream(self, payload, overrides):
        def frames():
            yield pb.StepStreamRequest(begin=pb.StepBegin(session_id=self._session, step=self._step_no, group_overrides=overrides))
            for pid, _, b in payload:
                for c in self._chunks(pid, "", b):
                    yield pb.StepStreamRequest(grad=c)
            yield pb.StepStreamRequest(end=pb.StepEnd())
        parts = {}
        try:
            for r in self._stub.StepStream(frames()):
                if r.HasField("param"):
                    parts.setdefault(r.param.param_id, []).append(r.param.data)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return {pid: b"".join(chunks) for pid, chunks in parts.items()}

    # -- checkpoints ----------------------------------------------------------
    def state_dict(self):
        sd = super().state_dict()
        frames = self._call(self._stub.ExportState, pb.ExportStateRequest(session_id=self._session))
        sd["mur"] = {"frames": [f.SerializeToString() for f in frames], "step": self._step_no}
        return sd

    def load_state_dict(self, state_dict):
        mur = state_dict.get("mur")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "mur"})
        if mur is None:
            return
        frames = [pb.StateFrame.FromString(b) for b in mur["frames"]]
        header = frames[0].header
        header.session_id = self._session
        header.spec.CopyFrom(self._spec())

        def gen():
            yield from frames
        self._call(self._stub.ImportState, gen())
        self._step_no = mur["step"]

    # -- lifetime -------------------------------------------------------------
    def close(self):
        """Frees the server-side session (and stops a server started by "auto")."""
        try:
            if getattr(self, "_session", None) is not None:
                try:
                    self._stub.CloseSession(pb.CloseSessionRequest(session_id=self._session))
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

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


__all__ = ["RemoteOptimizer", "MurError"]
