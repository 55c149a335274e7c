"""L-BFGS through a mur server (``RemoteOptimizer(params, optimizer="lbfgs")``):
``step(closure)`` is a sequence of rounds, one per evaluation of the closure.
The client evaluates the closure and sends the loss and gradients; the server
(which keeps the history: ts-server/src/session/lbfgs.ts) answers with the
parameters where it needs the next evaluation, or with the step's result.
Each round goes on the optimizer's plane as a step would: on shm the gradients
are in the arena and the server writes the next point into it (``p.data``
views it), on tcp in the data port's frame, on gRPC in one Step message or,
above the message limit, a StepStream (docs/data-path.md, "L-BFGS rounds").
Also the codec between the server's checkpoint slots for L-BFGS (on the first
parameter, flat: old_dirs is the k pairs stacked) and torch.optim.LBFGS's
state (lists of tensors, Python numbers)."""

import torch

from .errors import MurError

# torch.optim.LBFGS's arguments and defaults (the server's table; checked against GetCapabilities by
# tests/test_lbfgs.py), for the names server="auto" checks before it starts its server.
DEFAULTS = dict(
    lr=1.0,
    max_iter=20,
    max_eval=None,
    tolerance_grad=1e-7,
    tolerance_change=1e-9,
    history_size=100,
    line_search_fn=None,
)

# The server's L-BFGS slots that hold Python numbers in torch's state.
_COUNTS = ("func_evals", "n_iter")
_SCALARS = ("t", "H_diag", "prev_loss")
_PAIRS = ("old_dirs", "old_stps")


def closure_step(opt, closure):
    """One torch.optim.LBFGS step through the server; returns the closure's first loss, as torch."""
    if closure is None:
        raise ValueError(
            "step(): optimizer='lbfgs' evaluates the loss several times per step: "
            "pass a closure that clears the gradients, computes the loss, calls backward() and returns the loss "
            "(as torch.optim.LBFGS.step(closure))"
        )
    opt._step_no += 1  # a retry keeps it: the server applies a step once
    opt._state_cache = None
    number, rnd, first = opt._step_no, 0, None
    for _ in range(1_000_000):  # each round is one evaluation; the server's max_eval ends the step long before
        with torch.enable_grad():
            loss = closure()
        if first is None:
            first = loss
        prep = opt._prepare_step(number) or opt._empty_step(number)
        prep.round = rnd
        prep.loss = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        if opt.param_groups[0].get("maximize"):
            prep.loss = -prep.loss  # maximize: the server minimises -loss along -grad
        opt._plane.step(prep)
        reply = opt._plane.last_reply
        if reply.restart:
            rnd = 0  # the server rolled the step back (a restart in the middle of it): the parameters are as before it
            continue
        if not reply.evaluate:
            return first
        rnd = reply.round + 1
    raise MurError(f"step {number}: the server asked for more evaluations than any max_eval allows")


def torch_group(group):
    """The group's whole-number hyperparameters as ints and max_eval filled in, as torch.optim.LBFGS keeps them
    (a state_dict then loads into it: its history_size sizes a list)."""
    for k in ("max_iter", "history_size"):
        if isinstance(group.get(k), float) and group[k].is_integer():
            group[k] = int(group[k])
    if group.get("max_eval") is None and isinstance(group.get("max_iter"), int):
        group["max_eval"] = group["max_iter"] * 5 // 4
    elif isinstance(group.get("max_eval"), float) and group["max_eval"].is_integer():
        group["max_eval"] = int(group["max_eval"])


def to_torch(st):
    """The first parameter's state entry from the server's slots -> torch.optim.LBFGS's."""
    out = {}
    k = st["ro"].numel() if "ro" in st else 0
    for slot, v in st.items():
        if slot == "step":
            continue  # torch's LBFGS counts n_iter and func_evals, not steps
        if slot in _COUNTS:
            out[slot] = int(v.item())
        elif slot in _SCALARS:
            out[slot] = float(v.item())
        elif slot == "ro":
            out[slot] = [float(x) for x in v.reshape(-1)]
        elif slot in _PAIRS:
            flat = v.reshape(-1)
            n = flat.numel() // k if k else 0
            out[slot] = [flat[i * n : (i + 1) * n].clone() for i in range(k)]
        elif slot in ("d", "prev_flat_grad"):
            out[slot] = v.reshape(-1)
        else:
            out[slot] = v
    for slot in ("ro", *_PAIRS):
        if "d" in out:
            out.setdefault(slot, [])
    return out


def from_torch(st):
    """torch.optim.LBFGS's state entry -> the server's slots (tensors); its scratch "al" is dropped."""
    out = {}
    for slot, v in st.items():
        if slot == "al":
            continue
        if isinstance(v, (list, tuple)):
            parts = [torch.as_tensor(x, dtype=torch.float32).reshape(-1) for x in v]
            v = torch.cat(parts) if parts else torch.zeros(0)
            if not parts:
                continue  # no pair kept: the server takes the absence
        elif not torch.is_tensor(v):
            if v is None:
                continue
            v = torch.tensor(float(v))
        out[slot] = v.detach().to(torch.float32).reshape(-1) if slot not in _COUNTS + _SCALARS else v.reshape(())
    return out
