"""``overlap=True`` on the shm plane: each gradient moved into the arena as
backward finishes it, and checked by the server while it is still hot.

A post-accumulate-grad hook (torch >= 2.1) runs on each parameter when
backward has accumulated its gradient. It

- copies ``p.grad`` into the parameter's arena gradient region (cast to
  float32 for a parameter that is not float32) unless ``p.grad`` already is
  that region's view, and makes ``p.grad`` the view for a float32 parameter,
  so that the copy happens while the gradient is in cache instead of on the
  step's critical path; the values ``p.grad`` shows stay the same;
- queues the arena index on the fast lane (``Lane.queue``): the server's
  lane thread scans it for finiteness at once, while backward goes on;
- records a ``Mark``: the gradient tensor and torch's version counters of it
  and of the arena view at that moment.

At ``step()`` the plane asks ``take(pid, p)``: when ``p.grad`` is the tensor
the hook saw and no version counter moved (no ``clip_grad_norm_``, no
unscaling, no ``p.grad.mul_``, no second backward after it), the arena
already holds the step's gradient (no copy) and the lane's check stands (the
step index carries ``_UNCHANGED``, and ``_SPECULATE`` unless the step negates
it for maximize: the update the lane staged when it checked it may then be
committed instead of computed, lane.cc); otherwise the step copies and the
server scans and computes as without overlap. Writes that bypass torch (``p.grad.data``, which has a
version counter of its own; numpy on the arena's memory; ctypes) do not move
the version counter and are not seen: do not write gradients behind torch's
back with overlap on.

The hooks hold the plane only weakly and check that they run on the parameter
they were registered on (a deep copy of the model may carry them along:
its parameters are not this session's). ``detach()`` removes every hook.
"""

import weakref
from dataclasses import dataclass

import torch

from .base import PARAM_DTYPES, is_view_of

HAS_HOOK = hasattr(torch.Tensor, "register_post_accumulate_grad_hook")  # torch >= 2.1


@dataclass
class Mark:
    """What the hook saw: the gradient (weakly, None when it is the arena
    view), its version, the arena view's version, and whether the lane took
    the index into its queue."""

    grad: "weakref.ref[torch.Tensor] | None"
    grad_version: int
    view_version: int
    queued: bool


class HotGrads:
    """The hooks of one shm plane and the marks they left since the last step."""

    def __init__(self, plane):
        self._plane = weakref.ref(plane)
        self._hooks = {}  # pid -> (weakref to the parameter, hook handle)
        self._marks = {}  # pid -> Mark

    def attach(self, entries):
        """Hooks on every parameter of ``entries`` ((pid, p)) not hooked yet."""
        me = weakref.ref(self)
        for pid, p in entries:
            if pid in self._hooks:
                continue

            def hook(param, pid=pid):
                hot = me()
                if hot is not None:
                    hot._on_grad(pid, param)

            self._hooks[pid] = (weakref.ref(p), p.register_post_accumulate_grad_hook(hook))

    def detach(self):
        """Removes every hook and forgets every mark (close, and before the plane goes)."""
        for _, handle in self._hooks.values():
            handle.remove()
        self._hooks, self._marks = {}, {}

    def forget(self):
        """Drops every mark: the arena moved (its views are new) or a step used them."""
        self._marks = {}

    def _on_grad(self, pid, p):  # grad mode is off in backward unless create_graph, refused below
        plane = self._plane()
        hooked = self._hooks.get(pid)
        if plane is None or hooked is None or hooked[0]() is not p or pid not in plane.views:
            return  # not this session's parameter (a copy of the model), or the plane is closing
        self._marks.pop(pid, None)
        i, _, gv = plane.views[pid]
        g = p.grad
        if (
            g is None
            or gv.numel() == 0
            or g.requires_grad  # backward(create_graph=True): p.grad is part of a graph, leave it be
            or g.is_sparse
            or g.device.type != "cpu"
            or g.dtype not in PARAM_DTYPES
            or g.shape != gv.shape
        ):
            return  # the step handles (or refuses) it as without overlap
        if not is_view_of(g, gv):
            gv.copy_(g)  # cast to float32 for a parameter that is not float32
            if g.dtype == torch.float32 and p.dtype == torch.float32:
                p.grad = g = gv  # a second backward (micro-batches) accumulates here
        lane = plane.arena.lane
        queued = lane is not None and lane.queue(i, gv.numel() * 4)
        self._marks[pid] = Mark(None if is_view_of(g, gv) else weakref.ref(g), g._version, gv._version, queued)

    def take(self, pid, p, gv):
        """(in_arena, checked) for parameter ``pid`` at a step, forgetting its
        mark: ``in_arena`` when the arena view already holds ``p.grad`` as the
        hook left it, ``checked`` when moreover the lane has it queued."""
        m = self._marks.pop(pid, None)
        if m is None or p.grad is None:
            return False, False
        g = p.grad
        if m.grad is None:
            same = is_view_of(g, gv) and gv._version == m.view_version
        else:
            same = m.grad() is g and g._version == m.grad_version and gv._version == m.view_version
        return same, same and m.queued
