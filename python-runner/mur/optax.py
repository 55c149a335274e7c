"""mur.optax: a mur server session as an optax GradientTransformation.

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     mur.optax.remote("adam", rule="additive", lr=1e-3))
    state = tx.init(params)                      # creates the server session
    grads = jax.jit(jax.grad(loss))(params, batch)
    updates, state = tx.update(grads, state, params)   # one server step, outside jit
    params = optax.apply_updates(params, updates)

Built on mur.RemoteOptimizer (sessions, shared memory or gRPC, retries,
checkpoints): each pytree leaf becomes a float32 torch tensor, the gradients
are written into the tensors' ``.grad`` and one ``step()`` runs on the server.

``updates`` are ``new_params - params`` in float32, so
``optax.apply_updates(params, updates)`` gives the server's new parameters bit
for bit wherever old and new are within a factor 2 of each other (every element
of an ordinary step: the difference is then exact). Elsewhere (a weight
crossing zero, or shrinking 1000x in one step) it is within ``ulp(new - old)``
of the server's value, a float32 rounding of the step itself (measured: half
that); no float32 update does better there. The session keeps the server's
values either way: parameters that come back as ``params + updates`` are not
treated as edits, while parameters changed otherwise are sent to the server
before the step (so edits are never undone).

The step talks to a server, so ``update`` cannot be traced by ``jax.jit``
(a traced call raises TypeError): jit the loss and gradient function and call
``update`` outside it, as above.
"""

import numbers
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from .optimizer import RemoteOptimizer

__all__ = ["remote", "RemoteState", "RemoteTransformation", "schedule_free_eval_params"]

# Session handles of this process. The state pytree carries only the number,
# so it stays a pytree of arrays that optax, jax.tree and checkpointers can map.
_NEXT = [1]
_CHECKPOINT_FORMAT = "mur.optax/1"
# The live sessions by handle, for schedule_free_eval_params(state, params).
_ADAPTERS: "weakref.WeakValueDictionary[int, _Adapter]" = weakref.WeakValueDictionary()


class RemoteState(NamedTuple):
    """optax state of a remote transformation: ``count`` steps made and
    ``handle``, which session of this process holds the rest (int32 scalars;
    numpy, not jax arrays: they live on the host with the session, and a jax
    scalar would cost a device transfer every step)."""

    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count, as optax's own states do
    handle: np.ndarray


class RemoteTransformation(optax.GradientTransformation):
    """optax.GradientTransformation(init, update) plus the session's lifetime
    and checkpoints (``state_dict`` / ``load_state_dict``, ``close``)."""

    __slots__ = ()

    @property
    def adapter(self):
        return self.init.__self__

    def state_dict(self, state):
        """A checkpoint of the server-side state (plain Python: ints, floats,
        bytes; picklable): moments, step counts and the parameters."""
        return self.adapter.state_dict(state)

    def load_state_dict(self, state, checkpoint):
        """Restores a checkpoint into this transformation's session (after
        ``init``); returns the state to continue with."""
        return self.adapter.load_state_dict(state, checkpoint)

    def close(self):
        """Frees the server session (and a server started by server="auto")."""
        self.adapter.close()

    @property
    def optimizer(self):
        """The underlying mur.RemoteOptimizer (None before init)."""
        return self.adapter.opt


def _arrays(tree, convert, kind=torch.Tensor):
    """`tree` (dicts of dicts) with every `kind` leaf converted: the
    checkpoint holds numpy arrays, the optimizer's state_dict torch tensors."""
    if isinstance(tree, dict):
        return {k: _arrays(v, convert, kind) for k, v in tree.items()}
    return convert(tree) if isinstance(tree, kind) else tree


def _leaf_array(x, what, i):
    if isinstance(x, jax.core.Tracer):
        raise TypeError(
            f"mur.optax: {what} leaf {i} is a jax tracer: the remote update talks to a server and cannot "
            "run inside jax.jit / vmap / grad; jit the loss and gradient function and call update() "
            "outside it"
        )
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"mur.optax: {what} leaf {i} has dtype {a.dtype}; mur keeps float32 parameters")
    return a


def _lr_of(hyper, what):
    """hyper with optax's learning_rate as mur's lr, and its schedule (a
    callable count -> lr, evaluated and sent with each step) or None."""
    hyper = dict(hyper)
    if "learning_rate" in hyper:
        if "lr" in hyper:
            raise ValueError(f"{what}learning_rate={hyper['learning_rate']!r} and lr={hyper['lr']!r}: give one of them")
        hyper["lr"] = hyper.pop("learning_rate")
    schedule = hyper.pop("lr") if callable(hyper.get("lr")) else None
    if schedule is not None:
        hyper["lr"] = float(schedule(0))
    return hyper, schedule


class _Run:
    """The labels of one prefix leaf's subtree (a pytree leaf, not a list node)."""

    __slots__ = ("labels",)

    def __init__(self, labels):
        self.labels = labels


def _leaf_labels(param_labels, params, groups):
    """One label per leaf of params (flattening order) from optax.multi_transform's
    param_labels: a pytree prefix of params with a label at each leaf, or a
    callable params -> such a pytree. Every label must be a key of groups."""
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    labels = param_labels(params) if callable(param_labels) else param_labels
    try:
        # Each label leaf of the prefix, repeated for the leaves of its subtree.
        nested = jax.tree_util.tree_map(
            lambda lab, sub: _Run([lab] * len(jax.tree_util.tree_leaves(sub))), labels, params
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"mur.optax: param_labels is not a pytree prefix of params (a label per leaf or subtree): {e}"
        ) from None
    flat = [
        lab for run in jax.tree_util.tree_leaves(nested, is_leaf=lambda x: isinstance(x, _Run)) for lab in run.labels
    ]
    if len(flat) != len(paths):
        raise ValueError(f"mur.optax: param_labels gives {len(flat)} labels for the {len(paths)} leaves of params")
    for path, lab in zip(paths, flat):
        if not isinstance(lab, str) or lab not in groups:
            raise ValueError(
                f"mur.optax: param_labels gives params leaf {path or '(root)'} the label {lab!r}, which is not "
                f"a key of groups ({', '.join(map(repr, groups))})"
            )
    return flat


def _check_groups(groups, param_labels):
    """groups: {label: {"optimizer": name (default: the session's), hyperparameters}}."""
    if (groups is None) != (param_labels is None):
        raise ValueError(
            "mur.optax: groups= and param_labels= go together (groups maps each label to its optimizer and "
            "hyperparameters, param_labels labels the leaves)"
        )
    if groups is None:
        return None
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"mur.optax: groups={groups!r}: must be a non-empty dict {{label: {{...}}}}")
    out = {}
    for label, g in groups.items():
        if not isinstance(label, str) or not isinstance(g, dict):
            raise TypeError(f"mur.optax: groups[{label!r}]={g!r}: must be a dict keyed by a label (a string)")
        if "params" in g:
            raise ValueError(f"mur.optax: groups[{label!r}] has 'params': param_labels says which leaves it holds")
        if "optimizer" in g and not isinstance(g["optimizer"], str):
            raise TypeError(f"mur.optax: groups[{label!r}]: optimizer={g['optimizer']!r}: must be a name")
        for k, v in g.items():
            if k not in ("lr", "learning_rate", "optimizer") and isinstance(v, numbers.Real) and not np.isfinite(v):
                raise ValueError(f"mur.optax: groups[{label!r}]: {k}={v!r}: must be finite")
        out[label] = _lr_of(g, f"groups[{label!r}]: ")
    return out


class _Adapter:
    def __init__(self, optimizer, rule, server, hyperparameters, groups=None, param_labels=None):
        self.optimizer, self.rule, self.server = optimizer, rule, server
        # A schedule (optax's contract: count -> lr) is evaluated here and sent
        # with each step; a number is a hyperparameter like any other.
        self.hyper, self.schedule = _lr_of(hyperparameters, "")
        self.groups, self.param_labels = _check_groups(groups, param_labels), param_labels
        self.schedules = [self.schedule]  # per param group of the session
        self.opt = None
        self.handle = None

    def _param_groups(self, params, tensors):
        """The RemoteOptimizer's param groups: one per label, in the order the
        labels first appear among the leaves; a group without an lr takes the
        session's (its number or its schedule), as optax.contrib.muon's Adam
        takes muon's learning rate unless given its own."""
        if self.groups is None:
            return tensors, [self.schedule]
        labels = _leaf_labels(self.param_labels, params, self.groups)
        order = list(dict.fromkeys(labels))
        out, schedules = [], []
        for label in order:
            hyper, schedule = self.groups[label]
            g = {"params": [t for t, lab in zip(tensors, labels) if lab == label], **hyper}
            if "lr" not in g and "lr" in self.hyper:
                g["lr"], schedule = self.hyper["lr"], self.schedule
            out.append(g)
            schedules.append(schedule)
        return out, schedules

    # -- session ---------------------------------------------------------------
    def init(self, params):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if not leaves:
            raise ValueError("mur.optax: init(params) got a pytree with no arrays")
        arrays = []
        for i, leaf in enumerate(leaves):
            a = _leaf_array(leaf, "params", i)
            if a.dtype != np.float32:
                raise TypeError(
                    f"mur.optax: params leaf {i} has dtype {a.dtype}; mur keeps float32 parameters "
                    "(cast the pytree with jax.tree.map(lambda x: x.astype(jnp.float32), params))"
                )
            arrays.append(np.array(a, dtype=np.float32, order="C"))  # our own writable copy
        tensors = [torch.from_numpy(a) for a in arrays]
        groups, schedules = self._param_groups(params, tensors)
        try:
            opt = RemoteOptimizer(groups, optimizer=self.optimizer, rule=self.rule, server=self.server, **self.hyper)
        except ValueError as e:  # name the group by its label, not its index
            msg = str(e)
            if self.groups is not None and msg.startswith("param_groups["):
                i = int(msg[len("param_groups[") : msg.index("]")])
                label = [lab for lab in dict.fromkeys(_leaf_labels(self.param_labels, params, self.groups))][i]
                raise ValueError(f"mur.optax: groups[{label!r}]{msg[msg.index(']') + 1 :]}") from None
            raise
        self.schedules = schedules
        self.close()  # a second init replaces the session (its old states go stale)
        self.opt, self.tensors, self.treedef = opt, tensors, treedef
        self.shapes = [a.shape for a in arrays]
        # What the caller's params are expected to be at the next update:
        # bitwise equal means "not edited" (the server's values stand).
        self.expected = [t.detach().numpy().copy() for t in tensors]
        self.handle = _NEXT[0]
        _NEXT[0] += 1
        _ADAPTERS[self.handle] = self
        self.steps = 0  # steps the server applied (a failed step is not counted)
        return RemoteState(count=np.asarray(0, np.int32), handle=np.asarray(self.handle, np.int32))

    def _check_state(self, state):
        if not isinstance(state, RemoteState):
            raise TypeError(
                f"mur.optax: state is a {type(state).__name__}, not the RemoteState this "
                "transformation's init() returned"
            )
        for leaf in (state.count, state.handle):
            if isinstance(leaf, jax.core.Tracer):
                _leaf_array(leaf, "state", 0)
        if self.opt is None:
            raise ValueError("mur.optax: update() before init(), or after close()")
        handle = int(state.handle)
        if handle != self.handle:
            raise ValueError(
                f"mur.optax: state.handle={handle} belongs to another (or an earlier) session; this "
                f"transformation's session is {self.handle} (use the state its latest init() or "
                "load_state_dict() returned)"
            )
        count = int(state.count)
        if count != self.steps:
            raise ValueError(
                f"mur.optax: state.count={count}, but the session has made {self.steps} steps: a "
                "remote session cannot step from an old state (restore a checkpoint with "
                "load_state_dict to go back)"
            )

    def _leaves(self, tree, what):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            raise ValueError(f"mur.optax: {what} has structure {treedef}, init(params) had {self.treedef}")
        out = []
        for i, (leaf, shape) in enumerate(zip(leaves, self.shapes)):
            a = _leaf_array(leaf, what, i)
            if a.shape != shape:
                raise ValueError(f"mur.optax: {what} leaf {i} has shape {a.shape}, the parameter has {shape}")
            out.append(a)
        return out

    def update(self, updates, state, params=None):
        self._check_state(state)
        grads = self._leaves(updates, "grads")
        current = self._leaves(params, "params") if params is not None else None
        for i, g in enumerate(grads):
            if not np.isfinite(g).all():
                raise ValueError(f"mur.optax: grads leaf {i} holds NaN or Inf; the session is unchanged")
        # Everything is checked: from here the step is applied once.
        with torch.no_grad():
            if current is not None:
                for t, p, e in zip(self.tensors, current, self.expected):
                    p32 = np.ascontiguousarray(p, dtype=np.float32)
                    if not np.array_equal(p32.view(np.int32), e.view(np.int32)):
                        t.copy_(torch.from_numpy(p32.copy()))  # an edit: the server takes it before the step
            # Without params, updates are relative to the server's values before the step.
            old = [t.detach().numpy().copy() for t in self.tensors] if current is None else None
            for t, g in zip(self.tensors, grads):
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
                # Straight into .grad's memory: on shared memory that is the
                # server's gradient buffer after the first step.
                np.copyto(t.grad.numpy(), g, casting="same_kind")
            for group, schedule in zip(self.opt.param_groups, self.schedules):
                if schedule is not None:
                    group["lr"] = float(schedule(int(state.count)))
            self.opt.step()
            self.steps += 1
            new = [t.detach().numpy() for t in self.tensors]
            base = current if current is not None else old
            ups, expected = [], []
            for b, n in zip(base, new):
                u, e = _updates(np.asarray(b, np.float32), n)
                ups.append(u)
                expected.append(e)
            self.expected = expected if current is not None else [n.copy() for n in new]
        # One batched transfer for all leaves (half the cost of one per leaf).
        updates = jax.tree_util.tree_unflatten(self.treedef, jax.device_put(ups))
        return updates, RemoteState(count=np.asarray(self.steps, np.int32), handle=state.handle)

    # -- checkpoints -------------------------------------------------------------
    def state_dict(self, state):
        self._check_state(state)
        sd = self.opt.state_dict()
        return {
            "format": _CHECKPOINT_FORMAT,
            "optimizer": self.opt.optimizer_name,
            "rule": self.opt.rule_name,
            "count": int(state.count),
            "param_groups": sd["param_groups"],
            "state": _arrays(sd["state"], lambda t: t.numpy().copy()),
            "mur": _arrays(sd["mur"], lambda t: t.numpy().copy()),
        }

    def load_state_dict(self, state, checkpoint):
        if self.opt is None:
            raise ValueError("mur.optax: load_state_dict() before init(params)")
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(
                f"mur.optax: not a checkpoint of mur.optax (format "
                f"{checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__!r},"
                f" expected {_CHECKPOINT_FORMAT!r})"
            )
        if (checkpoint["optimizer"], checkpoint["rule"]) != (self.opt.optimizer_name, self.opt.rule_name):
            raise ValueError(
                f"mur.optax: the checkpoint is of {checkpoint['optimizer']} x {checkpoint['rule']}, this "
                f"transformation runs {self.opt.optimizer_name} x {self.opt.rule_name}"
            )
        if int(state.handle) != self.handle:
            raise ValueError(f"mur.optax: state.handle={int(state.handle)} is not this transformation's session")
        self.opt.load_state_dict(
            {
                "state": _arrays(checkpoint.get("state", {}), torch.from_numpy, np.ndarray),
                "param_groups": checkpoint["param_groups"],
                "mur": _arrays(checkpoint["mur"], torch.from_numpy, np.ndarray),
            }
        )
        self.expected = [t.detach().numpy().copy() for t in self.tensors]
        self.steps = int(checkpoint["count"])
        return RemoteState(count=np.asarray(self.steps, np.int32), handle=state.handle)

    def eval_params(self, state, params):
        self._check_state(state)
        if self.opt.optimizer_name != "schedule_free_adamw":
            raise ValueError(
                f"mur.optax: schedule_free_eval_params needs a schedule_free_adamw session, this one runs "
                f"{self.opt.optimizer_name}"
            )
        ys = self._leaves(params, "params")
        b1 = float(self.opt.param_groups[0]["betas"][0])
        st = self.opt.state
        xs = []
        for t, y in zip(self.tensors, ys):
            y = np.asarray(y, np.float32)
            z = st.get(t, {}).get("z")
            # optax's (yi - (1.0 - b1) * zi) / b1 in float32 (z = y before the first step: x = y)
            xs.append(y if z is None else (y - (1.0 - b1) * z.numpy().reshape(y.shape)) / b1)
        return jax.tree_util.tree_unflatten(self.treedef, [jnp.asarray(x, jnp.float32) for x in xs])

    def params(self):
        """The server's current parameters as a pytree of jax arrays."""
        return jax.tree_util.tree_unflatten(
            self.treedef, [jnp.asarray(t.detach().numpy().copy()) for t in self.tensors]
        )

    def close(self):
        if self.opt is not None:
            self.opt.close()
            self.opt = None


def _updates(old, new):
    """u = new - old in float32, and old + u (what optax.apply_updates gives).

    old + u == new exactly when new and old are within a factor 2 of each
    other (Sterbenz: the difference is then exact), which covers ordinary
    steps. Otherwise the exact sum old + u is new + delta with |delta| <=
    ulp(new - old) / 2 and rounds to within ulp(new - old) of new; no other
    float32 u does better (the representable sums are ulp(u) apart)."""
    u = new - old
    return u.astype(np.float32, copy=False), old + u


def schedule_free_eval_params(state, params):
    """optax.contrib.schedule_free_eval_params for a remote schedule_free_adamw:
    the evaluation point x = (y - (1 - b1) z) / b1 of every leaf, y from
    ``params`` and z from the session of ``state`` (one ExportState, cached until
    the next step). A pytree like ``params``."""
    if not isinstance(state, RemoteState):
        raise TypeError(f"mur.optax: state is a {type(state).__name__}, not a RemoteState of mur.optax.remote")
    adapter = _ADAPTERS.get(int(state.handle))
    if adapter is None or adapter.opt is None:
        raise ValueError(f"mur.optax: state.handle={int(state.handle)} belongs to no open session of this process")
    return adapter.eval_params(state, params)


def remote(optimizer="adam", rule="additive", server="auto", groups=None, param_labels=None, **hyperparameters):
    """An optax GradientTransformation whose maths runs on a mur server.

    Args:
        optimizer: sgd, adam, adamw, adagrad, rmsprop, adamax, nadam, radam, adadelta, lion, rprop, asgd,
            lamb, lars, adafactor, muon, schedule_free_adamw (evaluate at
            ``schedule_free_eval_params(state, params)``).
        rule: additive (default: ordinary optimizers), multiplicative, hybrid, exp_sign.
        server: "auto" (a private local server, stopped by close() or at exit),
            "host:port" or "unix:/path".
        **hyperparameters: mur's (torch's) names: lr, betas, eps, weight_decay,
            momentum, ..., lr_in, lr_out, gamma; plus transport=, timeout=, ...
            of mur.RemoteOptimizer. ``lr`` (or optax's ``learning_rate``) may be
            a schedule, ``count -> lr``: the value for the step is sent with it.
        groups, param_labels: per-leaf optimizers in one session, as
            ``optax.multi_transform(transforms, param_labels)``: ``groups`` maps
            a label to ``{"optimizer": name, **hyperparameters}`` (``optimizer``
            defaults to the session's; a group without ``lr`` takes the
            session's, schedule included), ``param_labels`` is a pytree prefix
            of the params with a label per leaf (or a callable ``params ->``
            such a pytree). E.g. Muon for the matrices, AdamW for the rest::

                remote("muon", lr=0.02, groups={"muon": {}, "adam": {"optimizer": "adamw", "lr": 3e-4}},
                       param_labels=lambda p: jax.tree.map(lambda x: "muon" if x.ndim == 2 else "adam", p))

            A label that is not a key of ``groups`` is a ValueError naming the leaf.

    Returns a RemoteTransformation: ``init(params)`` creates the session (a
    second init replaces it), ``update(grads, state, params)`` makes one step
    and returns ``(new_params - params, state)``. Call ``close()`` when done
    (a session is also freed when the transformation is garbage collected).
    """
    if not isinstance(optimizer, str) or not isinstance(rule, str):
        raise TypeError(f"optimizer={optimizer!r}, rule={rule!r}: must be names (strings)")
    for k, v in hyperparameters.items():
        if k in ("lr", "learning_rate") and callable(v):
            continue
        if isinstance(v, numbers.Real) and not np.isfinite(v):
            raise ValueError(f"{k}={v!r}: must be finite")
    a = _Adapter(optimizer, rule, server, hyperparameters, groups, param_labels)
    return RemoteTransformation(init=a.init, update=a.update)
