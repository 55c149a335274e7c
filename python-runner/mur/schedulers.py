"""Schedules for the hybrid rule's gamma, used like torch.optim.lr_scheduler:

    opt = mur.RemoteOptimizer(model.parameters(), optimizer="adam", rule="hybrid")
    sched = mur.schedulers.ExponentialGammaDecay(opt, factor=0.9, patience=5)
    for batch in loader:
        ...
        opt.step()
        sched.step()            # or sched.step(val_loss): decay on a plateau

A scheduler only edits ``group["gamma"]`` in the optimizer's param_groups. A
RemoteOptimizer sends every group's hyperparameters with each step, so the
next step on the server uses the new gamma (the same path torch's lr
schedulers take for ``lr``). They work on ``mur.reference.Optimizer`` too.

The paper (Kirtas et al. 2024) moves gamma during training (``gamma_k =
gamma_0^k`` after a patience period) and the authors' release ships an
exponential gamma decay and a random gamma scheduler; docs/update-rules.md,
section 7, describes these three.
"""

import math
import numbers
import random

__all__ = ["ExponentialGammaDecay", "InverseExponentialGamma", "RandomGamma"]


def _number(name, value, low, high, low_open=False, high_open=False):
    """value as a float in [low, high] (an end excluded when *_open), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a finite number")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}={value!r}: must be in {lo}{low:g}, {high:g}{hi}")
    return float(value)


class _GammaScheduler:
    """What the three share: the optimizer's groups must have a gamma (the
    hybrid rule), get_last_gamma(), and a state_dict without the optimizer."""

    def __init__(self, optimizer):
        groups = getattr(optimizer, "param_groups", None)
        if not groups:
            raise TypeError(f"{type(self).__name__} needs an optimizer with param_groups, got {optimizer!r}")
        for i, g in enumerate(groups):
            if g.get("gamma") is None:
                rule = getattr(optimizer, "rule_name", "?")
                raise ValueError(
                    f"param_groups[{i}] has no gamma: gamma schedules need rule='hybrid' "
                    f"(this optimizer's rule is {rule!r})"
                )
        self.optimizer = optimizer
        self.base_gammas = [float(g["gamma"]) for g in groups]
        self.last_epoch = 0  # how many times step() was called, as torch's schedulers count
        self._last_gamma = list(self.base_gammas)

    def _set(self, gammas):
        for g, v in zip(self.optimizer.param_groups, gammas):
            g["gamma"] = v
        self._last_gamma = list(gammas)

    def get_last_gamma(self):
        """The gamma of each param group, as last set by this scheduler."""
        return list(self._last_gamma)

    def state_dict(self):
        """Everything but the optimizer (whose own state_dict carries the groups' gamma)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Resumes where the saved scheduler was, and puts its last gammas back
        into the groups (the optimizer's own state_dict carries them too; this
        makes the order of the two loads not matter)."""
        last = state_dict.get("_last_gamma")
        if last is None or len(last) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state_dict has gammas for {None if last is None else len(last)} groups; "
                f"the optimizer has {len(self.optimizer.param_groups)}"
            )
        self.__dict__.update(state_dict)
        self._set(list(last))


class _PlateauGamma(_GammaScheduler):
    """A gamma moved by one rule (_move) either every step (step() without a
    metric, after `patience` steps) or, like ReduceLROnPlateau, when a metric
    passed to step(metric) has not improved for more than `patience` steps."""

    def __init__(self, optimizer, factor, patience, mode):
        super().__init__(optimizer)
        self.factor = _number("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"patience={patience!r}: must be an integer >= 0")
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: must be 'min' or 'max'")
        self.patience, self.mode = int(patience), mode
        self.best = None
        self.num_bad_steps = 0

    def _move(self, gamma, group):
        raise NotImplementedError

    def step(self, metric=None):
        self.last_epoch += 1
        if metric is None:
            # gamma_k = gamma_0 * factor^(k - patience) once the patience period is over.
            move = self.last_epoch > self.patience
        else:
            value = float(metric)
            if not math.isfinite(value):
                raise ValueError(f"metric={metric!r}: must be a finite number")
            better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            if better:
                self.best, self.num_bad_steps = value, 0
            else:
                self.num_bad_steps += 1
            move = self.num_bad_steps > self.patience
            if move:
                self.num_bad_steps = 0  # a new patience period starts after each move
        current = [float(g["gamma"]) for g in self.optimizer.param_groups]
        self._set([self._move(v, i) for i, v in enumerate(current)] if move else current)


class ExponentialGammaDecay(_PlateauGamma):
    """gamma <- max(gamma * factor, min_gamma): from the multiplicative rule
    toward the additive one.

    step() without a metric decays every step once `patience` steps have
    passed (the paper's gamma_k = gamma_0^k after a patience period, with
    factor = gamma_0); step(metric) decays when the metric (lower is better,
    mode="max" for accuracies) has not improved for more than `patience`
    consecutive steps, as torch's ReduceLROnPlateau.
    """

    def __init__(self, optimizer, factor=0.9, patience=0, min_gamma=0.0, mode="min"):
        self.min_gamma = _number("min_gamma", min_gamma, 0.0, 1.0)
        super().__init__(optimizer, factor, patience, mode)

    def _move(self, gamma, group):
        return max(gamma * self.factor, self.min_gamma)


class InverseExponentialGamma(_PlateauGamma):
    """The inverse schedule: gamma grows toward 1 (additive toward
    multiplicative), its distance to 1 shrinking by `factor` at each move:
    gamma <- min(1 - (1 - gamma) * factor, max_gamma). Same `patience` and
    metric behaviour as ExponentialGammaDecay."""

    def __init__(self, optimizer, factor=0.9, patience=0, max_gamma=1.0, mode="min"):
        self.max_gamma = _number("max_gamma", max_gamma, 0.0, 1.0)
        super().__init__(optimizer, factor, patience, mode)

    def _move(self, gamma, group):
        return min(1.0 - (1.0 - gamma) * self.factor, self.max_gamma)


class RandomGamma(_GammaScheduler):
    """A fresh gamma, uniform in [low, high], for every optimizer step, from a
    generator seeded with `seed` (the same value for every group). The first
    is drawn at construction, so the first step already uses one; each step()
    draws the next. state_dict() carries the generator's state, so a resumed
    run continues with the same sequence."""

    def __init__(self, optimizer, low=0.0, high=1.0, seed=0):
        super().__init__(optimizer)
        self.low = _number("low", low, 0.0, 1.0)
        self.high = _number("high", high, 0.0, 1.0)
        if self.low > self.high:
            raise ValueError(f"low={low!r} > high={high!r}: the range is empty")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed={seed!r}: must be an integer")
        self.seed = int(seed)
        self._rng = random.Random(self.seed)
        self._draw()

    def _draw(self):
        g = self.low + (self.high - self.low) * self._rng.random()
        self._set([g] * len(self.optimizer.param_groups))

    def step(self, metric=None):
        """Draws the next gamma (a metric is accepted and ignored, so code
        written for the plateau schedulers runs unchanged)."""
        self.last_epoch += 1
        self._draw()

    def state_dict(self):
        state = super().state_dict()
        version, internal, gauss = self._rng.getstate()
        # Plain ints and lists: loads with torch.load(weights_only=True) too.
        state["_rng"] = [version, list(internal), gauss]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        version, internal, gauss = state.pop("_rng")
        super().load_state_dict(state)
        self._rng = random.Random()
        self._rng.setstate((version, tuple(internal), gauss))
