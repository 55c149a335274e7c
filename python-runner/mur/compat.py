"""torch compatibility that needs more than a method: the step kept out of
torch.compile's tracing without importing dynamo at ``import mur``, and
learning-rate schedulers of a RemoteOptimizer that pickle (torch 1.13)."""

import copyreg
import importlib.abc
import importlib.util
import sys

import torch

_DYNAMO = "torch._dynamo"
_EAGER: list[type] = []  # classes whose own step() dynamo must never trace


def _disable(cls):
    step = cls.__dict__["step"]
    try:
        cls.step = torch.compiler.disable(
            step,
            reason=f"mur's {cls.__name__}.step talks to a server; it always "
            "runs eagerly (fullgraph=True cannot include it)",
        )
    except TypeError:  # a torch.compiler.disable without reason=
        cls.step = torch.compiler.disable(step)


class _AfterDynamo(importlib.abc.MetaPathFinder):
    """Wraps the steps once torch._dynamo is imported (torch.compile imports
    it): importing it here would cost most of a second for everyone."""

    def find_spec(self, name, path, target=None):
        if name != _DYNAMO:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            for cls in _EAGER:
                _disable(cls)

        loader.exec_module = exec_module
        return spec


def eager_step(cls):
    """Class decorator: torch.compile / dynamo never traces into cls.step
    (gRPC, protobuf, shared memory): it runs eagerly, a graph break for a
    compiled caller. torch < 2 has no dynamo: nothing to do."""
    if not (hasattr(torch, "compiler") and hasattr(torch.compiler, "disable")):
        return cls
    if _DYNAMO in sys.modules:
        _disable(cls)
    else:
        if not _EAGER:
            sys.meta_path.insert(0, _AfterDynamo())
        _EAGER.append(cls)
    return cls


# -- schedulers -------------------------------------------------------------------
# torch 1.13's OneCycleLR keeps a bound method of itself in its state_dict, so
# torch.save(scheduler.state_dict()) pickles the scheduler, hence its
# optimizer: a RemoteOptimizer refuses (its live session cannot be pickled).
# A scheduler of a RemoteOptimizer pickles without its optimizer (what
# load_state_dict needs is all there); the optimizer itself still refuses.
def _scheduler_reduce(sched):
    from .optimizer import RemoteOptimizer

    cls, args, state, *rest = object.__reduce_ex__(sched, 2)
    if isinstance(state, dict) and isinstance(state.get("optimizer"), RemoteOptimizer):
        state = {k: v for k, v in state.items() if k != "optimizer"}
    return (cls, args, state, *rest)


def _scheduler_classes():
    base = getattr(torch.optim.lr_scheduler, "LRScheduler", None) or torch.optim.lr_scheduler._LRScheduler
    seen, todo = set(), [base]
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.add(c)
            todo.extend(c.__subclasses__())
    return seen


def pickle_schedulers():
    """Registers _scheduler_reduce for every scheduler class torch (and mur.schedulers) defines."""
    for cls in _scheduler_classes():
        if cls not in copyreg.dispatch_table:
            copyreg.pickle(cls, _scheduler_reduce)
