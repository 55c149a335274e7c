"""mur.keras: a Keras 3 optimizer whose maths runs on a mur server.

    import os; os.environ["KERAS_BACKEND"] = "jax"
    import keras, mur.keras
    opt = mur.keras.RemoteOptimizer("adam", rule="hybrid", learning_rate=1e-3, gamma=0.5)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, epochs=3)
    opt.close()

Built on mur.RemoteOptimizer: ``build(variables)`` creates the server session
from the variables' values; every ``apply`` sends the gradients of the step
(after Keras's own clipping and loss-scale handling) and writes the server's
new values into the variables. The learning rate of the step (a number, or a
``keras.optimizers.schedules`` schedule evaluated at ``iterations``) is sent
with it.

Under ``jax.jit`` (``model.fit`` with the default ``jit_compile=True`` on the
JAX backend) the step is a ``jax.experimental.io_callback``: the loss and
gradients stay compiled and the host call runs once per step, in order.
``jit_compile=False`` and ``run_eagerly=True`` run it eagerly. Where the
gradients have no values (a symbolic tensor, e.g. a TensorFlow graph; only the
JAX backend is tested here) the step raises a RuntimeError asking for
``run_eagerly=True`` rather than doing nothing. An error inside the jitted step
(e.g. a NaN gradient) reaches the caller as jax's XlaRuntimeError carrying
mur's message; the session is unchanged.

``weight_decay`` is mur's (coupled L2 for adam/sgd/..., decoupled for
adamw/lion: docs/update-rules.md), not Keras's client-side decay.
``gradient_accumulation_steps`` is not supported (ValueError). The optimizer
state lives on the server: ``state_dict()`` / ``load_state_dict()`` save and
restore it (Keras's own ``save`` records only ``iterations`` and the rate).
"""

import re

import keras
import numpy as np
import torch

from .optimizer import RemoteOptimizer as _TorchRemote

__all__ = ["RemoteOptimizer"]

# Keras's own optimizer arguments, handled by the Keras base class.
_KERAS_ARGS = (
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
)


def _is_traced(x):
    try:
        import jax

        return isinstance(x, jax.core.Tracer)
    except ImportError:
        return False


def _concrete(x):
    """The value of a tensor as numpy, or None when it has none (symbolic)."""
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:
        return None


def _check_groups(groups, param_labels):
    """groups: {label: {"optimizer": name (default: the optimizer's), "learning_rate": a float
    or a schedule (default: the optimizer's), mur's hyperparameters}}."""
    if (groups is None) != (param_labels is None):
        raise ValueError(
            "mur.keras: groups= and param_labels= go together (groups maps each label to its optimizer and "
            "hyperparameters, param_labels labels the variables)"
        )
    if groups is None:
        return None
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"mur.keras: groups={groups!r}: must be a non-empty dict {{label: {{...}}}}")
    if not (callable(param_labels) or isinstance(param_labels, dict)):
        raise TypeError(
            f"mur.keras: param_labels={param_labels!r}: must be a callable variable -> label or a dict "
            "{variable path pattern (re.fullmatch, as keras.optimizers.OptimizerMap): label}"
        )
    for label, g in groups.items():
        if not isinstance(label, str) or not isinstance(g, dict):
            raise TypeError(f"mur.keras: groups[{label!r}]={g!r}: must be a dict keyed by a label (a string)")
        for k in ("lr", "params"):
            if k in g:
                raise ValueError(
                    f"mur.keras: groups[{label!r}] has {k!r}: "
                    + ("give the group's rate as learning_rate=" if k == "lr" else "param_labels places the variables")
                )
    return {label: dict(g) for label, g in groups.items()}


def _label_of(param_labels, variable):
    """The label of a variable: param_labels(variable), or the value of the one
    pattern of the dict that its path fully matches (None when none does)."""
    if callable(param_labels):
        return param_labels(variable)
    found = [lab for pattern, lab in param_labels.items() if re.fullmatch(pattern, variable.path)]
    if len(found) > 1:
        raise ValueError(f"mur.keras: variable {variable.path} matches more than one param_labels pattern")
    return found[0] if found else None


def _rate_at(rate, iterations):
    """A group's rate at a step: its schedule's value, or its number in float32
    (as Keras keeps an optimizer's learning_rate)."""
    return rate(iterations) if callable(rate) else np.float32(rate)


@keras.saving.register_keras_serializable(package="mur")
class RemoteOptimizer(keras.optimizers.Optimizer):
    """A Keras optimizer computing ``optimizer`` x ``rule`` on a mur server.

    Args:
        optimizer: sgd, adam, adamw, adagrad, rmsprop, adamax, nadam, radam, adadelta, lion, rprop, asgd,
            lamb, lars, adafactor, muon, schedule_free_adamw (the weights are y; Keras has no
            eval switch: use mur.RemoteOptimizer or mur.optax for the evaluation point x).
        rule: additive (default), multiplicative, hybrid, exp_sign.
        learning_rate: a float or a keras.optimizers.schedules schedule (mur's lr).
        server: "auto" (a private local server), "host:port" or "unix:/path".
        **kwargs: Keras's clipnorm, clipvalue, global_clipnorm, use_ema, ...,
            and mur's hyperparameters by their mur (torch) names: betas, eps,
            weight_decay, momentum, ..., lr_in, lr_out, gamma; and
            mur.RemoteOptimizer's transport=, timeout=, ...
        groups, param_labels: per-variable optimizers in one session (mur's
            param groups): ``groups`` maps a label to ``{"optimizer": name,
            "learning_rate": rate, **hyperparameters}`` (optimizer and rate
            default to this optimizer's), ``param_labels`` is a callable
            ``variable -> label`` or a dict ``{path pattern: label}``
            (``re.fullmatch``, as keras.optimizers.OptimizerMap). A variable
            whose label is not a key of ``groups`` is a ValueError naming it.
    """

    def __init__(
        self,
        optimizer="adam",
        rule="additive",
        learning_rate=0.001,
        server="auto",
        name=None,
        groups=None,
        param_labels=None,
        **kwargs,
    ):
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                f"gradient_accumulation_steps={kwargs['gradient_accumulation_steps']!r}: not supported by "
                "mur.keras.RemoteOptimizer (accumulate the gradients yourself, or use a larger batch)"
            )
        kwargs.pop("gradient_accumulation_steps", None)
        if "lr" in kwargs:
            raise ValueError(f"lr={kwargs['lr']!r}: give the learning rate as learning_rate= (a float or a schedule)")
        base = {k: kwargs.pop(k) for k in _KERAS_ARGS if k in kwargs}
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **base)
        self.mur_optimizer, self.mur_rule, self.server = optimizer, rule, server
        self.mur_hyperparameters = {k: v for k, v in kwargs.items() if v is not None}
        self.mur_groups, self.param_labels = _check_groups(groups, param_labels), param_labels
        self._rates = [None]  # per param group: None (the step's learning rate), a float or a schedule
        self._remote = None
        self._tensors = []

    # -- the session -------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        values = []
        for v in variables:
            a = _concrete(v.value)
            if a is None:
                raise RuntimeError(f"mur.keras: variable {v.path} has no value yet; build the model first")
            if a.dtype != np.float32:
                raise TypeError(f"mur.keras: variable {v.path} is {a.dtype}; mur keeps float32 parameters")
            values.append(np.array(a, dtype=np.float32, order="C"))
        tensors = [torch.from_numpy(a) for a in values]
        groups, self._rates = self._param_groups(variables, tensors)
        self._remote = _TorchRemote(
            groups,
            optimizer=self.mur_optimizer,
            rule=self.mur_rule,
            server=self.server,
            lr=float(_concrete(self.learning_rate)),
            **self.mur_hyperparameters,
        )
        self._tensors = tensors

    def _param_groups(self, variables, tensors):
        """One param group per label, in the order the labels first appear among
        the variables; a group's learning_rate (a float or a schedule) is its
        own, else the optimizer's."""
        if self.mur_groups is None:
            return tensors, [None]
        labels = []
        for v in variables:
            label = _label_of(self.param_labels, v)
            if not isinstance(label, str) or label not in self.mur_groups:
                raise ValueError(
                    f"mur.keras: param_labels gives variable {v.path} the label {label!r}, which is not a key of "
                    f"groups ({', '.join(map(repr, self.mur_groups))})"
                )
            labels.append(label)
        out, rates = [], []
        for label in dict.fromkeys(labels):
            g = dict(self.mur_groups[label])
            rate = g.pop("learning_rate", None)
            g["lr"] = float(_concrete(self.learning_rate if rate is None else _rate_at(rate, 0)))
            out.append({"params": [t for t, lab in zip(tensors, labels) if lab == label], **g})
            rates.append(rate)
        return out, rates

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._remote is None:
            raise RuntimeError("mur.keras: the optimizer has no server session (closed, or not built)")
        idx = [self._get_variable_index(v) for v in trainable_variables]
        if isinstance(learning_rate, keras.Variable):
            learning_rate = learning_rate.value  # inside fit's stateless scope: this step's (traced) value
        args = [learning_rate, self.iterations.value, *grads, *(v.value for v in trainable_variables)]
        if any(_is_traced(a) for a in args):
            # Inside jax.jit: the host step as an ordered io_callback, so it
            # runs exactly once per executed step, in program order.
            import jax
            from jax.experimental import io_callback

            shapes = [jax.ShapeDtypeStruct(tuple(v.shape), np.float32) for v in trainable_variables]
            new = io_callback(lambda *a: self._host_step(idx, *a), shapes, *args, ordered=True)
        else:
            new = self._host_step(idx, *args)
        for v, n in zip(trainable_variables, new):
            v.assign(n)

    def _host_step(self, idx, learning_rate, iterations, *arrays):
        n = len(idx)
        grads, values = arrays[:n], arrays[n:]
        lr = _concrete(learning_rate)
        if lr is None or any(_concrete(g) is None for g in grads):
            raise RuntimeError(
                "mur.keras.RemoteOptimizer: the gradients have no values here (a symbolic graph): the "
                "step runs on a mur server and needs concrete tensors; compile the model with "
                "run_eagerly=True (or use the JAX backend, where it runs under jit)"
            )
        if self._remote is None:
            raise RuntimeError("mur.keras: the optimizer has no server session (closed, or not built)")
        grads = [np.asarray(_concrete(g), dtype=np.float32) for g in grads]
        values = [np.asarray(_concrete(v), dtype=np.float32) for v in values]
        for i, g in zip(idx, grads):
            if not np.isfinite(g).all():
                raise ValueError(
                    f"mur.keras: the gradient of variable {self._trainable_variables[i].path} holds NaN "
                    "or Inf; the server session is unchanged"
                )
        stepped = set(idx)
        with torch.no_grad():
            for i, t in enumerate(self._tensors):
                if i not in stepped:
                    t.grad = None  # no gradient this step (Keras filtered it): not stepped
            for i, g, v in zip(idx, grads, values):
                t = self._tensors[i]
                if not np.array_equal(t.numpy().view(np.int32), v.reshape(t.shape).view(np.int32)):
                    t.copy_(torch.from_numpy(v.reshape(t.shape).copy()))  # edited in Keras: the server takes it
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
                np.copyto(t.grad.numpy(), g.reshape(t.shape))
            for group, rate in zip(self._remote.param_groups, self._rates):
                group["lr"] = float(lr if rate is None else _concrete(_rate_at(rate, _concrete(iterations))))
            self._remote.step()
            return tuple(self._tensors[i].detach().numpy().copy() for i in idx)

    # -- configuration and state ---------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.pop("gradient_accumulation_steps", None)
        config.update(
            {
                "optimizer": self.mur_optimizer,
                "rule": self.mur_rule,
                "server": self.server if isinstance(self.server, str) else "auto",
                "weight_decay": None,
            }
        )
        for k, v in self.mur_hyperparameters.items():
            config[k] = list(v) if isinstance(v, tuple) else v
        if self.mur_groups is not None:
            if callable(self.param_labels):
                raise ValueError(
                    "mur.keras: param_labels is a callable, which get_config cannot serialize; give a dict "
                    "{variable path pattern: label} to save this optimizer"
                )
            config["param_labels"] = dict(self.param_labels)
            config["groups"] = {
                label: {
                    k: keras.optimizers.schedules.serialize(v)
                    if isinstance(v, keras.optimizers.schedules.LearningRateSchedule)
                    else list(v)
                    if isinstance(v, tuple)
                    else v
                    for k, v in g.items()
                }
                for label, g in self.mur_groups.items()
            }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        groups = config.get("groups")
        if groups:
            config = dict(config)
            config["groups"] = {
                label: {
                    k: keras.optimizers.schedules.deserialize(v) if k == "learning_rate" and isinstance(v, dict) else v
                    for k, v in g.items()
                }
                for label, g in groups.items()
            }
        return super().from_config(config, custom_objects=custom_objects)

    @property
    def remote(self):
        """The underlying mur.RemoteOptimizer (None before build)."""
        return self._remote

    def state_dict(self):
        """The server-side state (moments, step counts, parameters) as
        mur.RemoteOptimizer.state_dict() gives it."""
        if self._remote is None:
            raise ValueError("mur.keras: state_dict() before the optimizer is built")
        return self._remote.state_dict()

    def load_state_dict(self, state_dict):
        """Restores a state_dict() into the server session (the variables'
        values are the checkpoint's afterwards on the server; assign them to
        the model too, e.g. by restoring its weights from the same point)."""
        if self._remote is None:
            raise ValueError("mur.keras: load_state_dict() before the optimizer is built")
        self._remote.load_state_dict(state_dict)

    def close(self):
        """Frees the server session (and a server started by server="auto")."""
        if self._remote is not None:
            self._remote.close()
            self._remote = None
