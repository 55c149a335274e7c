"""RemoteOptimizer: a torch.optim.Optimizer whose maths runs on a mur server.

    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adam", rule="hybrid", lr=1e-3)

This module is the torch-facing shell: arguments, param_groups, ``state``,
state_dict, hooks, torch compatibility. The rest sits beside it:
connection.py (channel, TLS, deadlines, retries, typed errors), session.py
(the server session's calls), checkpoint.py (the torch-format state codec)
and one data plane per transport (``transport``, mur/planes):

- ``"shm"`` (same host, native engine): ``p.data`` is a view of the
  server's shared-memory arena (planes/shm.py);
- ``"tcp"`` (a server on another host): the tensor bytes on a plain TCP (or
  TLS) connection to the server's data port (planes/tcp.py);
- ``"grpc"`` (anywhere): the tensor bytes inside gRPC messages (planes/grpc.py).

Hyperparameters live in ``param_groups`` as in torch: schedulers that edit
them are honoured at the next step.
"""

import functools
import inspect
import numbers
import os
import re
from collections import defaultdict

import torch
from google.protobuf import json_format

from . import lbfgs as _lbfgs
from ._proto.mur.v1 import optimizer_pb2 as pb
from .checkpoint import import_plan, mur_entry, torch_state
from .checkpoint import values as master_values
from .connection import Connection, check_address, load_pem
from .errors import NO_DEFAULT_SPEC, FailedPreconditionError, InvalidArgumentError, MurError, TransportUnavailable
from .planes.base import BF16, F16, F32, PARAM_DTYPES, PreparedStep, struct_of
from .planes.grpc import GrpcPlane
from .planes.rows import check_sparse_grad
from .planes.shm import ShmPlane
from .planes.tcp import TcpPlane
from .server import LocalServer
from .session import Session

_PLANES = {"shm": ShmPlane, "tcp": TcpPlane, "grpc": GrpcPlane}
_TRANSPORTS = ("auto", *_PLANES)
_WIRE_DTYPES = {"float32": F32, "bfloat16": BF16, "float16": F16}
_STATE_DTYPES = ("float32", "bfloat16", "q8")
# torch 2.x constructor flags that choose an implementation, not the maths:
# accepted and kept in param_groups (torch does), never sent to the server.
_TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")
# Optimizers torch gives decoupled_weight_decay; mur runs Adam's as "adamw",
# NAdam's and RAdam's with the server's own decoupled_weight_decay flag.
_DECOUPLED = ("adam", "adamw", "nadam", "radam")
_DECOUPLED_ON_SERVER = ("nadam", "radam")
# Group keys of a torch.optim state_dict that are not hyperparameters of the maths.
_TORCH_NOOP_KEYS = {"params", "param_names", "maximize", "decoupled_weight_decay", "initial_lr", *_TORCH_FLAGS}
# mur's flags bridging Keras/optax (docs/frameworks.md): torch.optim has none, i.e. all off.
_BRIDGE_FLAGS = {"eps_before_correction", "eps_in_sqrt", "lr_in_momentum"}
# Hyperparameters whose values are strings (the server's "choice" type): Muon's adjust_lr_fn.
_CHOICES = {"adjust_lr_fn", "line_search_fn"}
_DEFAULT_OPTIMIZER, _DEFAULT_RULE = "adam", "hybrid"  # without a server --config
_SGD_DEFAULT_LR = 1e-3  # torch >= 2.2's SGD default (mur's sgd has none)
_NO_COPY = (
    "a RemoteOptimizer holds a live server session and cannot be copied or pickled; "
    "use state_dict() / load_state_dict() to save or move its state"
)


@functools.lru_cache(maxsize=256)
def _pids(gi, count):
    """The ids of group gi's parameters ("p<group>.<index>"), made once per group size."""
    return tuple(f"p{gi}.{pi}" for pi in range(count))


def _wire_value(k, v):
    if isinstance(v, bool) or (isinstance(v, str) and k in _CHOICES):
        return v
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, (tuple, list)) and all(x is None or isinstance(x, numbers.Real) for x in v):
        return [None if x is None else float(x) for x in v]  # None: Adafactor's eps[0]
    if torch.is_tensor(v) and v.numel() == 1:
        return float(v.item())
    raise TypeError(f"hyperparameter {k}: {v!r} is not a number, a bool or a tuple of numbers")


def param_groups_of(params):
    """The constructor's params as torch's param-group dicts, with torch's
    checks made here (before any server is involved): an iterable of tensors,
    of (name, tensor) pairs (``named_parameters()``: the names go to
    "param_names"), or of group dicts."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            "params argument given to the optimizer should be an iterable of Tensors or dicts, "
            f"but got {torch.typename(params)}"
        )
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]
    groups = []
    for g in params:
        if not isinstance(g, dict):
            raise TypeError(f"param group must be a dict, but got {torch.typename(g)}")
        ps = g["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        group = {**g, "params": ps}
        if ps and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in ps):
            group["param_names"], group["params"] = [n for n, _ in ps], [t for _, t in ps]
        groups.append(group)
    flat = [p for g in groups for p in g["params"]]
    for i, p in enumerate(flat):
        if not isinstance(p, torch.Tensor):
            raise TypeError(
                f"params[{i}]: optimizer can only optimize Tensors, but one of the params is {torch.typename(p)}"
            )
    if len({id(p) for p in flat}) != len(flat):
        raise ValueError("some parameters appear in more than one parameter group")
    return groups


def _check_param(label, p):
    if p.is_sparse:
        raise TypeError(f"parameter {label}: sparse parameters are not supported")
    if p.dtype not in PARAM_DTYPES:
        raise TypeError(
            f"parameter {label}: dtype {p.dtype}; mur takes float32, float16, bfloat16 and float64 "
            "parameters (the server computes in float32)"
        )


def _local_names(optimizer, rule, hyperparameters):
    """Names checked before server="auto" starts its server (which runs the
    same tables as mur.reference)."""
    from . import reference

    tables = {**reference.DEFAULTS, "lbfgs": _lbfgs.DEFAULTS}  # L-BFGS has no elementwise reference
    if optimizer not in tables:
        raise ValueError(f"optimizer={optimizer!r}: unknown (one of {', '.join(tables)})")
    if rule not in reference.RULE_DEFAULTS:
        raise ValueError(f"rule={rule!r}: unknown (one of {', '.join(reference.RULE_DEFAULTS)})")
    known = {**tables[optimizer], **reference.RULE_DEFAULTS[rule]}
    for k in hyperparameters:
        if k not in known:
            raise ValueError(
                f"{k}={hyperparameters[k]!r}: not a hyperparameter of {optimizer} with the {rule} rule "
                f"(known: {', '.join(known)})"
            )


def _decoupled(optimizer, dwd):
    """torch's decoupled_weight_decay= -> the optimizer mur runs."""
    if optimizer not in _DECOUPLED:
        raise ValueError(
            f"decoupled_weight_decay={dwd!r}: not an argument of {optimizer} (torch has it for {', '.join(_DECOUPLED)})"
        )
    if not isinstance(dwd, bool):
        raise ValueError(f"decoupled_weight_decay={dwd!r}: must be True or False")
    if not dwd and optimizer == "adamw":
        raise ValueError(
            "decoupled_weight_decay=False with optimizer='adamw': AdamW's weight decay is "
            "decoupled (use optimizer='adam' for coupled L2)"
        )
    return "adamw" if dwd and optimizer == "adam" else optimizer  # torch: Adam(decoupled_weight_decay=True)


def _check_flags(groups):
    """torch 2.x's flags, per group: values torch accepts; none that would change the maths here."""
    for g in groups:
        for k in _TORCH_FLAGS:
            if not (g.get(k) is None or isinstance(g[k], bool)):
                raise ValueError(f"{k}={g[k]!r}: must be None, False or True")
        for k in ("maximize", "decoupled_weight_decay"):
            if k in g and not isinstance(g[k], bool):
                raise ValueError(f"{k}={g[k]!r}: must be False or True")
        if g.get("differentiable"):
            raise ValueError(
                "differentiable=True: mur does not support differentiating through the optimizer "
                "step (the step runs on the server, outside autograd)"
            )
        if g.get("capturable") and any(p.device.type != "cpu" for p in g["params"]):
            raise ValueError(
                "capturable=True: mur does not support CUDA graph capture of the step (the step "
                "runs on the server); leave capturable=False"
            )


def _check_options(transport, wire_dtype, timeout, reconnect_timeout):
    if not isinstance(transport, str) or transport not in _TRANSPORTS:
        raise ValueError(f"transport={transport!r}: must be one of {', '.join(map(repr, _TRANSPORTS))}")
    if not isinstance(wire_dtype, str) or wire_dtype not in _WIRE_DTYPES:
        raise ValueError(f"wire_dtype={wire_dtype!r}: must be one of {', '.join(map(repr, _WIRE_DTYPES))}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0):
        raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds or None")
    if not (isinstance(reconnect_timeout, numbers.Real) and reconnect_timeout >= 0):
        raise ValueError(f"reconnect_timeout={reconnect_timeout!r}: must be a number of seconds >= 0")


def _check_state(state_dtype, state_seed):
    if not isinstance(state_dtype, str) or state_dtype not in _STATE_DTYPES:
        raise ValueError(f"state_dtype={state_dtype!r}: must be one of {', '.join(map(repr, _STATE_DTYPES))}")
    if isinstance(state_seed, bool) or not isinstance(state_seed, numbers.Integral) or not 0 <= state_seed < 2**32:
        raise ValueError(f"state_seed={state_seed!r}: must be an integer in [0, 2**32)")


def _one_server(server):
    if isinstance(server, (list, tuple)):  # a list of one address (more: ShardedRemoteOptimizer)
        if len(server) != 1 or not isinstance(server[0], str):
            raise ValueError(f"server={server!r}: a list of servers holds addresses (at least one)")
        server = server[0]
    return server if server == "auto" else check_address(server)


class RemoteOptimizer(torch.optim.Optimizer):
    """A drop-in torch optimizer computing ``optimizer`` x ``rule`` on a mur server.

    Args:
        params: parameters, ``named_parameters()`` (errors then name them as
            the model does), or parameter groups, as for any torch optimizer.
        optimizer: sgd, adam, adamw, adagrad, rmsprop, adamax, nadam, radam, adadelta, lion,
            rprop, asgd, lamb, lars, adafactor, muon (2-D parameters only), lbfgs
            (torch.optim.LBFGS: one parameter group, ``step(closure)`` only; the
            closure runs here, the history on the server, one round trip per
            evaluation on every transport: on shm the gradients and the points
            to evaluate are in the arena, mur/lbfgs.py),
            schedule_free_adamw (evaluate between eval() and train()).
        rule: additive, multiplicative, hybrid or exp_sign. Neither given: the
            server's --config (its optimizer, rule and defaults), or adam with
            the hybrid rule when it has none (server="auto" never has one).
        server: "auto" (start a local server on a private Unix socket, stopped
            by close(), at exit, or when this process dies), "host:port" or
            "unix:/path" of a running one; a list of addresses shards the
            parameters across them (a ShardedRemoteOptimizer, mur/sharded.py).
        transport: "auto" (default: shared memory when the server offers it
            and this process can map its arena; else the server's tcp data
            plane when it has one; else gRPC), "shm" or "tcp" (that one, or a
            TransportUnavailable error saying why) or "grpc" (tensors in gRPC
            messages only). ``opt.transport`` tells which one is in use. With
            "shm" every parameter's ``p.data`` is a view of the server's copy
            until close().
        wire_dtype: "float32", "bfloat16" or "float16": how gradients travel
            on the tcp and grpc transports. The 2-byte ones halve the bytes up
            and round each gradient first: bfloat16 keeps float32's range
            with 8 significant bits; float16 keeps 11 bits but only
            |g| <= 65504 (a larger gradient becomes infinite and the step is
            refused, as for any non-finite gradient). Ignored on shm.
        overlap: on shm with torch >= 2.1, a post-accumulate-grad hook moves
            each gradient into the arena as backward finishes it (p.grad
            becomes the arena's view, its values unchanged) and the server
            checks it for finiteness then, while backward goes on; step()
            copies and scans only what changed since (mur/planes/hot.py).
            With True the server also computes each checked tensor's update
            into staging and step() commits what still stands; "check" moves
            and checks only (no staging: the server keeps no second copy of
            the parameters and state). Off by default (False): a write that
            bypasses torch's version counter (``p.grad.data``, numpy) after
            backward is not checked again. Results are the same bits either
            way. Elsewhere (tcp, grpc, torch 1.13) it does nothing;
            ``opt.overlap`` tells.
        state_dtype: "float32" (default), "bfloat16" or "q8": how the server
            stores the optimizer's per-element state (moments, accumulators).
            bfloat16 halves those bytes; each step still computes in float32
            and stores with stochastic rounding seeded by ``state_seed`` (an
            integer, default 0; the same seed, gradients and steps give the
            same state). q8 keeps one byte per element and one float32 per
            256 (8-bit block-wise dynamic quantisation, as bitsandbytes'
            8-bit optimizers; docs/engine.md "8-bit state"). state_dict()
            carries it widened to float32 (it loads into torch.optim), and
            records the dtype in its "mur" entry. Every optimizer takes both
            (SparseAdam's row-sparse steps too); Schedule-Free's z and
            Adafactor's statistics stay float32 (docs/engine.md "compact
            state for every optimizer"). Engines that cannot store them (the
            tfjs ones) keep float32.
        timeout: deadline in seconds of every call to the server (None: none).
        reconnect_timeout: how long a call keeps retrying a lost connection,
            waiting 0.1 s doubling up to 0.5 s (x0.5-1.5 jitter) between
            tries (mur/connection.py), so a restarted server is found within
            about a second of listening again.
        tls_ca, tls_cert, tls_key: TLS to a server started with --tls-cert
            (PEM bytes or file paths): the CA that signed the server's
            certificate (None: the system's roots), and this client's
            certificate and key for a server that requires one
            (--tls-client-ca). All None: plaintext.
        **hyperparameters: torch's names (lr, betas, eps, weight_decay,
            momentum, ...) plus lr_in, lr_out (defaults to 10 x lr) and gamma
            (hybrid; default 0.9, scheduled by mur.schedulers).
            sgd's lr defaults to 1e-3 (torch >= 2.2); lr=None is refused.
            torch 2.x's foreach, fused, capturable and differentiable are
            accepted no-ops (differentiable=True, capturable=True on a GPU:
            ValueError); maximize=True steps on -grad (p.grad keeps its sign);
            decoupled_weight_decay=True makes "adam" "adamw" and gives nadam
            and radam torch 2.x's decoupled decay (NAdamW, RAdamW).

    Every argument is checked before a local server is started.
    Parameters may be float32, float16, bfloat16 or float64: the server keeps
    a float32 master copy of each (float64 parameters are computed in
    float32), gradients are cast to float32 on the way in, and the master is
    cast back into the parameter after each step. ``add_param_group`` works
    after creation too: the group joins the server session.

    ``opt.state`` is the server's state, torch-style, fetched once per step
    at most (cached until the next step or load); ``state_dict()`` loads into
    the matching torch.optim class too, and ``load_state_dict()`` takes a
    torch.optim state_dict of the same algorithm. ``session_id`` names the
    server session (its token stays private). A RemoteOptimizer cannot be
    copied or pickled (TypeError: use state_dict()).
    """

    def __new__(cls, params=None, *args, **kwargs):
        # server=[addr, addr, ...]: the parameters are sharded across those
        # servers (mur/sharded.py, docs/scale-out.md): a subclass of this one.
        server = kwargs.get("server", args[2] if len(args) > 2 else None)
        if cls is RemoteOptimizer and isinstance(server, (list, tuple)) and len(server) > 1:
            from .sharded import ShardedRemoteOptimizer

            cls = ShardedRemoteOptimizer
        return super().__new__(cls)

    def __init__(
        self,
        params,
        optimizer=None,
        rule=None,
        server="auto",
        transport="auto",
        wire_dtype="float32",
        timeout=300.0,
        tls_ca=None,
        tls_cert=None,
        tls_key=None,
        reconnect_timeout=60.0,
        overlap=False,
        state_dtype="float32",
        state_seed=0,
        **hyperparameters,
    ):
        self._local = self._conn = self._session = self._plane = None
        self._owner = os.getpid()
        self._state_cache = None
        # -- every argument, before a server is started or reached ---------------
        server = _one_server(server)
        _check_options(transport, wire_dtype, timeout, reconnect_timeout)
        if overlap not in (None, True, False, "check"):
            raise ValueError(f"overlap={overlap!r}: True, 'check' or False (None: the default, False)")
        self._overlap = False if overlap is None else overlap
        _check_state(state_dtype, state_seed)
        self.state_dtype, self._state_seed = state_dtype, int(state_seed)
        ca, cert, key = load_pem(tls_ca), load_pem(tls_cert), load_pem(tls_key)
        if (cert is None) != (key is None):
            raise ValueError("tls_cert and tls_key go together (a client certificate needs its key)")
        # torch 2.x's implementation flags are accepted (no-ops here); maximize
        # is done by this client; decoupled_weight_decay picks AdamW's maths.
        flags = {k: hyperparameters.pop(k) for k in (*_TORCH_FLAGS, "maximize") if k in hyperparameters}
        if "decoupled_weight_decay" in hyperparameters:
            flags["decoupled_weight_decay"] = hyperparameters.pop("decoupled_weight_decay")
        # No optimizer and no rule: the server's --config (a remote server may
        # have one; server="auto" has none), else Adam with the hybrid rule.
        from_config = optimizer is None and rule is None and server != "auto"
        if not from_config:
            optimizer, rule = optimizer or _DEFAULT_OPTIMIZER, rule or _DEFAULT_RULE
            if "decoupled_weight_decay" in flags:
                optimizer = _decoupled(optimizer, flags["decoupled_weight_decay"])
                if optimizer in _DECOUPLED_ON_SERVER:  # a hyperparameter of the server's nadam, radam
                    hyperparameters["decoupled_weight_decay"] = flags.pop("decoupled_weight_decay")
        if "lr" in hyperparameters and hyperparameters["lr"] is None:
            raise ValueError("lr=None: the learning rate must be a number (leave lr out for the optimizer's default)")
        for k, v in hyperparameters.items():
            if v is not None:
                _wire_value(k, v)
        groups = param_groups_of(params)
        if optimizer == "lbfgs" and len(groups) != 1:
            raise ValueError(
                f"optimizer='lbfgs': {len(groups)} parameter groups; L-BFGS takes one "
                "(torch.optim.LBFGS doesn't support per-parameter options)"
            )
        _check_flags([{**flags, **g} for g in groups])
        for gi, g in enumerate(groups):
            for pi, p in enumerate(g["params"]):
                _check_param(self._label_of(groups, f"p{gi}.{pi}"), p)
        if server == "auto":
            _local_names(optimizer, rule, hyperparameters)
        self._requested_transport = transport
        self._wire_dtype = _WIRE_DTYPES[wire_dtype]
        # -- the server ---------------------------------------------------------------
        try:
            self._local = LocalServer() if server == "auto" else None
            address = self._local.address if self._local else server
            self._conn = Connection(
                address,
                tls=(ca, cert, key) if (ca, cert, key) != (None, None, None) else None,
                timeout=None if timeout is None else float(timeout),
                reconnect_timeout=float(reconnect_timeout),
            )
            self._conn.rename = self._rename
            caps = self._caps = self._conn.capabilities()
            if state_dtype != "float32" and state_dtype not in caps.state_dtypes:
                raise FailedPreconditionError(
                    f"state_dtype={state_dtype!r}: the server at {self._conn.address} does not take it "
                    f"(it takes {', '.join(caps.state_dtypes) or 'float32 only'})"
                )
            self._session = Session(self._conn, caps, self._params)
            resolved = None
            if from_config:
                optimizer, rule, resolved = self._session_from_config(groups)
                if (
                    "decoupled_weight_decay" in flags
                    and _decoupled(optimizer, flags["decoupled_weight_decay"]) != optimizer
                ):
                    raise ValueError(
                        f"decoupled_weight_decay={flags['decoupled_weight_decay']!r}: the server's "
                        f"--config chose optimizer {optimizer!r}; pass optimizer= to choose another"
                    )
            opt = next((o for o in caps.optimizers if o.name == optimizer), None)
            rl = next((r for r in caps.rules if r.name == rule), None)
            if opt is None:
                raise ValueError(
                    f"optimizer={optimizer!r}: unknown (one of {', '.join(o.name for o in caps.optimizers)})"
                )
            if rl is None:
                raise ValueError(f"rule={rule!r}: unknown (one of {', '.join(r.name for r in caps.rules)})")
            known = {h.name: h for h in list(opt.hyperparameters) + list(rl.hyperparameters)}
            self._known = set(known)
            self._opt_hypers = {h.name for h in opt.hyperparameters}
            self._all_opt_hypers = {h.name for o in caps.optimizers for h in o.hyperparameters}
            for k in hyperparameters:
                if k not in known:
                    raise ValueError(
                        f"{k}={hyperparameters[k]!r}: not a hyperparameter of {optimizer} with the {rule} "
                        f"rule (known: {', '.join(known)})"
                    )
            defaults = {name: _default(h) for name, h in known.items()}
            if optimizer == "sgd" and defaults.get("lr") is None:
                defaults["lr"] = _SGD_DEFAULT_LR  # as torch >= 2.2 (lr_out still follows lr)
            defaults["maximize"] = False
            if resolved is not None:  # the server's --config defaults, under the client's own arguments
                defaults.update(
                    {
                        k: tuple(v) if isinstance(v, list) else v
                        for k, v in json_format.MessageToDict(resolved.defaults).items()
                        if k in known
                    }
                )
            defaults.update(hyperparameters)
            defaults.update(flags)
            self.optimizer_name, self.rule_name = optimizer, rule
            self._own = self._own_optimizers(groups, caps, rl)
            super().__init__(groups, defaults)
            for g in self.param_groups:  # torch filled in the main optimizer's defaults: not this group's
                if g.get("optimizer", optimizer) != optimizer:
                    for k in [k for k in g if k in self._all_opt_hypers and k not in self._own[g["optimizer"]][1]]:
                        del g[k]
            if optimizer == "lbfgs":
                _lbfgs.torch_group(self.param_groups[0])
            if resolved is None:
                self._session.create(self._spec(), list(self._params()), self._names())
            self._step_no = 0
            self._plane = self._open_plane(transport)
        except BaseException:
            self.close()
            raise

    def _own_optimizers(self, groups, caps, rl):
        """Groups naming an optimizer of their own ({"params": ..., "optimizer": "adamw"}):
        {name: (its hyperparameters, those and the rule's)}; each such group gets
        that optimizer's defaults under its own values (the rule's hyperparameters
        are the session's, so those come from the constructor's defaults, as for
        every group), and a key that optimizer does not have is refused, naming
        the group."""
        own = {}
        for gi, g in enumerate(groups):
            name = g.get("optimizer", self.optimizer_name)
            if name == self.optimizer_name:
                continue
            o = next((x for x in caps.optimizers if x.name == name), None)
            if o is None:
                raise ValueError(
                    f"param_groups[{gi}]: optimizer={name!r}: unknown (one of {', '.join(x.name for x in caps.optimizers)})"
                )
            known = {h.name: h for h in list(o.hyperparameters) + list(rl.hyperparameters)}
            for k in g:
                if k not in known and k not in _TORCH_NOOP_KEYS and k != "optimizer":
                    raise ValueError(
                        f"param_groups[{gi}]: {k}={g[k]!r}: not a hyperparameter of {name} with the "
                        f"{self.rule_name} rule (known: {', '.join(known)})"
                    )
            for h in o.hyperparameters:
                g.setdefault(h.name, _default(h))
            own[name] = ({h.name for h in o.hyperparameters}, set(known))
        return own

    def _opt_hypers_of(self, group):
        name = group.get("optimizer", self.optimizer_name)
        return self._own[name][0] if name in getattr(self, "_own", {}) else self._opt_hypers

    def _session_from_config(self, groups):
        """CreateSession without a spec: the server's --config decides;
        (optimizer, rule, resolved spec), or Adam/hybrid and None when the
        server has no --config (mur-reason: no-default-spec)."""
        decls = [(f"g{gi}", f"p{gi}.{pi}", p) for gi, g in enumerate(groups) for pi, p in enumerate(g["params"])]
        names = {pid: n.strip("'") for _, pid, _ in decls if (n := self._label_of(groups, pid)).startswith("'")}
        try:
            resolved = self._session.create(pb.OptimizerSpec(), decls, names)
        except InvalidArgumentError as e:
            if e.reason != NO_DEFAULT_SPEC:
                raise
            return _DEFAULT_OPTIMIZER, _DEFAULT_RULE, None
        return resolved.optimizer, resolved.rule, resolved

    def _open_plane(self, transport):
        self._transport_reason = None
        for name in ("shm", "tcp") if transport == "auto" else (transport,):
            if name == "grpc":
                break
            try:
                return _PLANES[name].open(self._session, wire_dtype=self._wire_dtype, overlap=self._overlap)
            except TransportUnavailable as e:
                if transport == name:
                    raise
                self._transport_reason = e.reason  # "auto": the next one, silently
        caps = self._caps
        if self._wire_dtype != F32 and self._wire_dtype not in caps.dtypes:
            wire = next(k for k, v in _WIRE_DTYPES.items() if v == self._wire_dtype)
            raise FailedPreconditionError(
                f"wire_dtype={wire!r}: the server at {self._conn.address} does not accept {wire} gradients "
                f"(dtypes: {', '.join(pb.DType.Name(d) for d in caps.dtypes)})"
            )
        return GrpcPlane.open(self._session, wire_dtype=self._wire_dtype)

    # -- names ------------------------------------------------------------------
    @staticmethod
    def _label_of(groups, pid):
        """How messages name parameter pid ("p<group>.<index>"): the model's
        name where the client was given one, else its place in param_groups."""
        gi, pi = map(int, pid[1:].split("."))
        names = groups[gi].get("param_names") if gi < len(groups) else None
        if names and pi < len(names):
            return f"'{names[pi]}'"
        return f"param_groups[{gi}]['params'][{pi}]"

    def _rename(self, message):
        """A server message with its ids ('p0.1', groups.g0) as the user knows them."""
        groups = self.__dict__.get("param_groups") or []  # [] while the session is created
        message = re.sub(r"'(p\d+\.\d+)'", lambda m: self._label_of(groups, m.group(1)), message)
        return re.sub(r"\bgroups\.g(\d+)", r"param_groups[\1]", message)

    def _names(self):
        return {
            pid: n.strip("'")
            for _, pid, _ in self._params()
            if (n := self._label_of(self.param_groups, pid)).startswith("'")
        }

    # -- groups -----------------------------------------------------------------
    def add_param_group(self, param_group):
        """torch's add_param_group; once the session exists the new group joins
        it on the server (AddParameters): the next steps update its parameters
        with its hyperparameters. A group torch would refuse, or the server
        refuses (a bad hyperparameter, a dtype it does not take), raises and
        leaves the optimizer as it was."""
        if self.__dict__.get("_plane") is None:  # torch's __init__: the session is created with these groups
            super().add_param_group(param_group)
            return
        self._check_open()
        if self.optimizer_name == "lbfgs":
            raise ValueError("add_param_group: optimizer='lbfgs' takes one parameter group (as torch.optim.LBFGS)")
        n = len(self.param_groups)
        group = param_groups_of([param_group])[0] if isinstance(param_group, dict) else param_group
        if isinstance(group, dict) and group.get("optimizer", self.optimizer_name) != self.optimizer_name:
            raise ValueError(
                f"add_param_group: optimizer={group['optimizer']!r}: a group with an optimizer of its own is "
                "given to the constructor (AddParameters adds groups of the session's optimizer)"
            )
        super().add_param_group(group)  # torch's checks and defaults (a parameter in two groups: ValueError)
        try:
            if len(self.param_groups) != n + 1:  # a torch that did not append (it always does)
                raise RuntimeError("add_param_group: torch did not add the group")
            _check_flags(self.param_groups[n:])
            self._add_group_to_session(n, self.param_groups[n])
        except BaseException:
            del self.param_groups[n:]
            raise
        self._state_cache = None

    @torch.no_grad()
    def _add_group_to_session(self, gi, group):
        decls = [(f"g{gi}", f"p{gi}.{pi}", p) for pi, p in enumerate(group["params"])]
        for _, pid, p in decls:
            _check_param(self._label_of(self.param_groups, pid), p)
        hypers = {f"g{gi}": struct_of(self._group_hypers(group))}  # TypeError for a value that is not a number
        self._plane.sync()  # on shm the server moves the parameters out of the arena: with the client's edits
        self._session.add(hypers, decls, self._names())
        try:
            self._plane.params_added([pid for _, pid, _ in decls])
        except TransportUnavailable as e:
            # New parameters the arena cannot hold (on a GPU): every parameter goes by gRPC.
            self._plane.close()
            self._plane = GrpcPlane.open(self._session, wire_dtype=self._wire_dtype)
            if self._requested_transport == "shm":
                raise
            self._transport_reason = e.reason

    @property
    def transport(self):
        """The data plane in use: "shm", "tcp" or "grpc" (read-only)."""
        return self._plane.name if self._plane is not None else None

    @property
    def overlap(self):
        """The overlap in effect (read-only): True (gradients moved into the
        arena and checked as backward makes them, updates speculated),
        "check" (moved and checked only) or False (elsewhere than shm with
        torch >= 2.1, or not asked for)."""
        return getattr(self._plane, "_overlap", False)

    @property
    def lane_steps(self):
        """Steps that went through the shm fast lane (no RPC)."""
        return self._plane.lane_steps if self._plane is not None else 0

    @property
    def speculations(self):
        """(made, committed): updates the server's shm lane computed into staging
        while backward ran (overlap=True) and those steps committed, since the
        arena opened; (0, 0) on any other plane (README "overlap")."""
        lane = getattr(getattr(self._plane, "arena", None), "lane", None)
        return lane.speculations if lane is not None else (0, 0)

    @property
    def session_id(self):
        """The server session's id (None once closed); its token stays private."""
        s = self.__dict__.get("_session")
        return s.id if s is not None else None

    def _group_hypers(self, group):
        # Only the server's hyperparameters: schedulers add keys such as initial_lr.
        name = group.get("optimizer", self.optimizer_name)
        known = self._own[name][1] if name in getattr(self, "_own", {}) else self._known
        return {k: _wire_value(k, v) for k, v in group.items() if k in known and v is not None}

    def _params(self):
        for gi, group in enumerate(self.param_groups):
            name, params = f"g{gi}", group["params"]
            for pid, p in zip(_pids(gi, len(params)), params):
                yield name, pid, p

    def _spec(self):
        spec = pb.OptimizerSpec(
            optimizer=self.optimizer_name,
            rule=self.rule_name,
            groups={f"g{i}": struct_of(self._group_hypers(g)) for i, g in enumerate(self.param_groups)},
            group_optimizers=pb.GroupOptimizers(
                by_group={
                    f"g{i}": g["optimizer"]
                    for i, g in enumerate(self.param_groups)
                    if g.get("optimizer", self.optimizer_name) != self.optimizer_name
                }
            ),
        )
        if self.state_dtype != "float32" or self._state_seed:
            spec.state_dtype, spec.state_seed = self.state_dtype, self._state_seed
        return spec

    def _check_open(self):
        if self.session_id is None:
            raise FailedPreconditionError("this RemoteOptimizer is closed")

    # -- the step -------------------------------------------------------------
    def _prepare_step(self, number):
        """The step the next step() sends (validation too): the parameters with
        a gradient, those of maximizing groups, the groups' hyperparameters,
        checked as far as the client can; None when no parameter has a gradient."""
        grads, maximized = [], set()
        for gi, group in enumerate(self.param_groups):
            maximize = group.get("maximize")
            params = group["params"]
            for pid, p in zip(_pids(gi, len(params)), params):
                g = p.grad
                if g is None or p.numel() == 0:  # nothing to update (the server refuses empty inline tensors)
                    continue
                if g.is_sparse:
                    check_sparse_grad(self._label_of(self.param_groups, pid), p)
                elif g.shape != p.shape:
                    raise ValueError(
                        f"parameter {self._label_of(self.param_groups, pid)}: gradient of shape "
                        f"{tuple(g.shape)}, parameter is {tuple(p.shape)}"
                    )
                grads.append((pid, p))
                if maximize:
                    maximized.add(pid)  # the server is sent -grad (torch's maximize)
        if not grads:
            return None
        return self._prepared(number, grads, frozenset(maximized))

    def _prepared(self, number, grads, maximized):
        return PreparedStep(number, grads, maximized, [self._group_hypers(g) for g in self.param_groups])

    # -- Schedule-Free: train() / eval() ----------------------------------------
    @property
    def mode(self):
        """ "train" (the parameters are y, where gradients are taken) or "eval"
        (Schedule-Free groups hold x, the point to evaluate): see eval()."""
        return self.__dict__.get("_mode", "train")

    def _schedule_free_pairs(self):
        """(p, b1) of every parameter of a schedule_free_adamw group (maybe none)."""
        return [
            (p, float(g["betas"][0]))
            for g in self.param_groups
            if g.get("optimizer", self.optimizer_name) == "schedule_free_adamw"
            for p in g["params"]
        ]

    def _schedule_free_params(self):
        """(p, b1) of every parameter of a schedule_free_adamw group; refuses an optimizer without one."""
        out = self._schedule_free_pairs()
        if not out:
            raise ValueError(
                f"train()/eval(): no parameter group is optimized by schedule_free_adamw (this optimizer "
                f"runs {self.optimizer_name}); only Schedule-Free has an evaluation point"
            )
        return out

    def eval_params(self):
        """{param: x} for the Schedule-Free parameters: x = (y - (1 - b1) z) / b1
        in float32, as the server and optax derive it (optax.contrib.
        schedule_free_eval_params). Computed here from y (the parameter) and z
        (the server's slot, read with the state: one ExportState per step at
        most, cached): no call of its own, and it reads exactly the values the
        server's next step starts from. A parameter that never stepped has z = y,
        so x = y."""
        if self.mode == "eval":
            return {p: p.detach().clone() for p, _ in self._schedule_free_params()}
        pairs = self._schedule_free_params()
        state = self.state
        # A parameter that is not float32 holds a rounding of y: the server's float32 master is y.
        masters = {}
        if any(p.dtype != torch.float32 for p, _ in pairs):
            pids = {id(p): pid for _, pid, p in self._params()}
            flat = master_values(self._state_frames, self._session.by_id)
            masters = {id(p): flat[pids[id(p)]] for p, _ in pairs if p.dtype != torch.float32 and pids[id(p)] in flat}
        out = {}
        for p, b1 in pairs:
            y = masters[id(p)].to(p.device).view(p.shape) if id(p) in masters else p.detach().to(torch.float32)
            z = state.get(p, {}).get("z")
            out[p] = y.clone() if z is None else (y - (1.0 - b1) * z.to(y.device).view_as(y)) / b1
        return out

    @torch.no_grad()
    def eval(self):
        """Schedule-Free (as its reference implementation's optimizer.eval()):
        the Schedule-Free parameters take x, the average to evaluate at; step()
        is refused until train(). Other groups keep their values. Idempotent."""
        if self.mode == "eval":
            self._schedule_free_params()
            return self
        xs = self.eval_params()
        # The parameters are rebound to x (p.data), not written: their own
        # memory keeps y untouched (on shm that is the server's arena, which
        # must not hold x), and train() rebinds it, so no plane sees an edit.
        self.__dict__["_train_values"] = {p: p.data for p in xs}
        for p, x in xs.items():
            p.data = x.to(device=p.device, dtype=p.dtype)
        self.__dict__["_mode"] = "eval"
        return self

    @torch.no_grad()
    def train(self, mode=True):
        """Back to y (the parameters before eval(), bit for bit); train(False) is eval()."""
        if not mode:
            return self.eval()
        self._schedule_free_params()
        if self.mode == "train":
            return self
        for p, y in self.__dict__.pop("_train_values").items():
            p.data = y
        self.__dict__["_mode"] = "train"
        return self

    def _refuse_in_eval(self, what):
        if self.mode == "eval":
            raise FailedPreconditionError(
                f"{what} in eval mode: the Schedule-Free parameters hold x, not y; call opt.train() first"
            )

    @torch.no_grad()
    def step(self, closure=None):
        self._check_open()
        self._refuse_in_eval("step()")
        if self.optimizer_name == "lbfgs":
            return _lbfgs.closure_step(self, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._plane.step_coming()
        prep = self._prepare_step(self._step_no + 1)
        if prep is None:
            return loss
        self._step_no += 1  # a retry keeps it: the server applies a step once
        self._state_cache = None
        self._plane.step(prep)
        return loss

    def _empty_step(self, number):
        """A step with no gradient (L-BFGS counts them as zeros)."""
        return self._prepared(number, [], frozenset())

    @torch.no_grad()
    def _validate_step(self):
        """Phase 1 of a step across servers (mur/sharded.py): the server runs
        every check of the step that step() would send next and applies
        nothing; raises as that step would."""
        self._check_open()
        self._refuse_in_eval("step()")
        prep = self._prepare_step(self._step_no + 1)
        if prep is not None:
            self._plane.validate(prep)

    # -- checkpoints ----------------------------------------------------------
    @torch.no_grad()
    def _export(self):
        """The session's checkpoint (StateFrames), after syncing the client's edits."""
        self._check_open()
        if self.mode == "eval":  # the sync would send x as an edit: y goes back for the export
            self.train()
            try:
                return self._export()
            finally:
                self.eval()
        self._plane.sync()
        return self._session.export()

    @property
    def state(self):
        """The optimizer state as torch shows it: ``opt.state[p]["exp_avg"]``,
        fetched from the server (one ExportState) once per step at most and
        cached until the next step or load. A copy: writing to it changes
        nothing (use load_state_dict)."""
        d = self.__dict__
        if d.get("_state_cache") is not None:
            return d["_state_cache"]
        if d.get("_session") is None or d["_session"].id is None:  # not yet, or closed: torch's own (empty) dict
            return d.setdefault("_local_state", defaultdict(dict))
        self._state_frames = self._export()
        state = torch_state(self._state_frames, self._session.by_id)
        if self.optimizer_name == "lbfgs":
            for p in list(state):
                state[p] = _lbfgs.to_torch(state[p])
        d["_state_cache"] = state
        return d["_state_cache"]

    @state.setter
    def state(self, value):
        self.__dict__["_local_state"] = value  # torch's Optimizer.__init__; the server's state is the truth

    def state_dict(self):
        """torch's state_dict with the server's state as torch-style "state"
        entries (so the matching torch.optim class can load it, and state_dict
        hooks see it), plus "mur": the step number and the float32 masters of
        parameters that are not float32 (checkpoint.py)."""
        self._check_open()
        mode = self.mode
        if mode == "eval":  # the checkpoint holds y (the server's parameters), and says it was taken in eval mode
            self.train()
        try:
            self._state_cache = None
            self.state  # noqa: B018 - one export, cached
            frames = self._state_frames
            sd = super().state_dict()
            sd["mur"] = mur_entry(self._step_no, frames, [pid for _, pid, _ in self._params()], self._session.by_id)
            sd["mur"]["state_dtype"] = self.state_dtype  # the values are float32 (bfloat16 and q8 state widened)
            sd["mur"]["mode"] = mode
        finally:
            if mode == "eval":
                self.eval()
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
            raise ValueError(
                f"load_state_dict: {len(groups) if isinstance(groups, (list, tuple)) else 'no'} "
                f"param_groups, this optimizer has {len(self.param_groups)}"
            )
        for i, (g, ours) in enumerate(zip(groups, self.param_groups)):
            if len(g.get("params", ())) != len(ours["params"]):
                raise ValueError(
                    f"load_state_dict: param_groups[{i}] has {len(g.get('params', ()))} parameters, "
                    f"this optimizer's has {len(ours['params'])}"
                )
            theirs, mine = g.get("optimizer", self.optimizer_name), ours.get("optimizer", self.optimizer_name)
            if theirs != mine:
                raise ValueError(
                    f"load_state_dict: param_groups[{i}] is optimized by {theirs}, this optimizer's by {mine}"
                )
            opt_hypers = self._opt_hypers_of(ours)
            keys = set(g) - _TORCH_NOOP_KEYS
            foreign = sorted((keys & self._all_opt_hypers) - opt_hypers)
            # decoupled_weight_decay: torch < 2.2 has none (then it is False), and it is no flag of keys
            missing = sorted(opt_hypers - keys - _BRIDGE_FLAGS - {"decoupled_weight_decay"})
            # A torch state_dict has torch's formulas: it cannot load where a bridging flag is on.
            bridged = sorted(k for k in _BRIDGE_FLAGS & opt_hypers if k not in g and ours.get(k))
            dwd = g.get("decoupled_weight_decay")
            wrong_dwd = (
                isinstance(dwd, bool)
                and dwd != (self.optimizer_name == "adamw")
                and self.optimizer_name not in _DECOUPLED_ON_SERVER
            )
            if foreign or missing or wrong_dwd or bridged:
                why = "; ".join(
                    x
                    for x in (
                        f"it has {', '.join(foreign)}" if foreign else "",
                        f"it lacks {', '.join(missing)}" if missing else "",
                        f"this optimizer sets {', '.join(f'{k}=True' for k in bridged)}, which "
                        "torch.optim does not have"
                        if bridged
                        else "",
                        f"decoupled_weight_decay={dwd}" if wrong_dwd else "",
                    )
                    if x
                )
                raise ValueError(
                    f"load_state_dict: param_groups[{i}] is not the state_dict of a "
                    f"{self.optimizer_name} optimizer ({why}); a torch.optim state_dict loads only into "
                    f"the RemoteOptimizer of the same algorithm"
                )

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """Loads a RemoteOptimizer's state_dict (bit for bit) or a torch.optim
        state_dict of the same algorithm (its moments, buffers and step counts
        become the server's state)."""
        self._check_open()
        if self.mode == "eval":
            self.train()  # the load writes y; the checkpoint's mode decides below
        torch_format = state_dict.get("mur") is None
        if torch_format:
            self._check_torch_algorithm(state_dict)
        else:
            self._load_groups(state_dict["param_groups"])
        if self.optimizer_name == "lbfgs":
            state_dict = {
                **state_dict,
                "state": {k: _lbfgs.from_torch(v) for k, v in state_dict.get("state", {}).items()},
            }
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        pids = dict(zip(saved, (pid for _, pid, _ in self._params())))
        header, tensors, values, step = import_plan(state_dict, pids, self._session.id, self._spec())
        self._plane.sync()  # on shm the parameters view the arena, which the import writes
        self._session.import_frames(header, tensors)
        self._state_cache = None
        if step is not None:
            self._step_no = step
        self._plane.values_imported(values)
        if not torch_format and state_dict["mur"].get("mode") == "eval":
            self.eval()
        if torch_format:
            self._load_groups(state_dict["param_groups"])
            if self.optimizer_name in _DECOUPLED_ON_SERVER:
                for g, saved_g in zip(self.param_groups, state_dict["param_groups"]):
                    g["decoupled_weight_decay"] = saved_g.get(
                        "decoupled_weight_decay", False
                    )  # as torch's __setstate__

    # -- lifetime -------------------------------------------------------------
    def close(self):
        """Frees the server-side session (and stops a server started by "auto").

        With the shm transport the parameters first get their own memory,
        holding the last values, so the model keeps working after close()."""
        d = self.__dict__
        try:
            if d.get("_plane") is not None:
                try:
                    self._plane.close()
                finally:
                    self._plane = None
            if d.get("_session") is not None:
                self._session.close()
            if d.get("_conn") is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._state_cache = None
            if d.get("_local") is not None:
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


def _default(h):
    which = h.default_value.WhichOneof("kind")
    if which == "number_value":
        return h.default_value.number_value
    if which == "bool_value":
        return h.default_value.bool_value
    if which == "list_value":
        # null: Adafactor's eps[0] (torch's None)
        return tuple(
            None if v.WhichOneof("kind") == "null_value" else v.number_value for v in h.default_value.list_value.values
        )
    return None  # "the server's default" (lr_out follows lr unless set)


# inspect.signature(RemoteOptimizer) shows __init__'s arguments, not __new__'s dispatch.
RemoteOptimizer.__new__.__signature__ = inspect.signature(RemoteOptimizer.__init__)  # type: ignore[attr-defined]

__all__ = ["RemoteOptimizer", "MurError"]
