"""ShardedRemoteOptimizer: one model's parameters across several mur servers.

    opt = mur.RemoteOptimizer(model.parameters(), server=["host1:50051", "host2:50051"],
                              optimizer="adam", rule="hybrid", lr=1e-3)

``RemoteOptimizer(..., server=[a, b, ...])`` (more than one address) builds
this class, a RemoteOptimizer subclass: every parameter lives on one server
(its *shard*), and each shard is an ordinary single-server RemoteOptimizer
holding that server's session.
The semantics (assignment, the two-phase step, failures) are in
docs/scale-out.md; in short:

- assignment: ``assign_shards`` below, a function of the parameters' order
  and byte sizes only, so the same model always lands on the same shards;
- a step validates on every shard concurrently (``StepRequest.validate_only``)
  and applies on every shard only when all of them accepted it: a refusal
  (a NaN in one shard's gradients, a bad hyperparameter) changes no shard and
  raises naming the shard; a shard failing while applying is retried by its
  client (a server restarted on --state-dir takes the step under the same
  number, once), and else raises naming it;
- ``state_dict()`` is torch's format keyed by the global parameter index
  (the order of ``param_groups``), so it loads into any number of shards,
  into a single-server RemoteOptimizer, or into the matching torch.optim class.
"""

import numbers
import os
from collections import defaultdict
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor

import torch

from .errors import ConnectionLostError, DeadlineExceededError, FailedPreconditionError, MurError
from .optimizer import RemoteOptimizer, param_groups_of


def assign_shards(sizes, shards, load=None):
    """The shard of every parameter, from their sizes in bytes (in parameter
    order) alone: largest first (equal sizes: earlier parameter first), each
    onto the shard holding the fewest bytes so far (equal: the lower shard
    index), starting from the bytes `load` each shard already holds (none).
    Deterministic, so a model rebuilt later lands on the same shards."""
    if not (isinstance(shards, numbers.Integral) and shards >= 1):
        raise ValueError(f"shards={shards!r}: must be a positive integer")
    load = list(load) if load is not None else [0] * shards
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        k = min(range(shards), key=lambda k: (load[k], k))
        out[i] = k
        load[k] += sizes[i]
    return out


def _numbered(groups):
    """param_groups with each group's parameters as their flat indices (torch's state_dict format)."""
    out, start = [], 0
    for g in groups:
        n = len(g["params"])
        out.append({**{key: v for key, v in g.items() if key != "params"}, "params": list(range(start, start + n))})
        start += n
    return out


def _part(group, params, names):
    """A shard's part of a param group: the group's hyperparameters, these parameters (and their names)."""
    part = {**{key: v for key, v in group.items() if key not in ("params", "param_names")}, "params": params}
    if all(n is not None for n in names):
        part["param_names"] = names
    return part


def _shard_error(k, server, e, what):
    """`e` (raised by shard k) again, of the same class where it can be built
    from a message, naming the shard; ``.shard`` and ``.server`` say which."""
    msg = f"shard {k} ({server}) {what}: {e}"
    try:
        err = type(e)(msg)
    except Exception:
        err = MurError(msg, getattr(e, "code", None))
    if isinstance(e, MurError) and getattr(err, "code", None) is None:
        err.code = e.code
    err.shard, err.server = k, server
    return err


class _State(MutableMapping):
    """``opt.state`` of a sharded optimizer: each parameter's state from (and,
    assigned, into) its shard's server. ZeroRedundancyOptimizer.load_state_dict
    writes ``optim.state[p] = {...}``: that becomes an ImportState on p's shard."""

    def __init__(self, opt):
        self._opt = opt

    def __getitem__(self, p):
        k = self._opt._shard_of.get(p)
        if k is None:
            raise KeyError(p)
        return self._opt._shards[k].state[p]

    def __setitem__(self, p, value):
        self._opt._import_param_state(p, value)

    def __delitem__(self, p):
        raise TypeError("the state of a mur parameter lives on its server: load_state_dict() replaces it")

    def _all(self):
        out = {}
        for o in self._opt._shards:
            if o is not None:
                out.update(o.state)
        return out

    def __iter__(self):
        return iter(self._all())

    def __len__(self):
        return len(self._all())


class ShardedRemoteOptimizer(RemoteOptimizer):
    """A RemoteOptimizer whose parameters are spread over several mur servers
    (built by ``RemoteOptimizer(params, server=[addr1, addr2, ...])``).

    Every argument but ``server`` is a RemoteOptimizer argument and goes to
    each shard's RemoteOptimizer. ``shard_of(p)`` and ``servers`` tell where a
    parameter lives; ``shards[k]`` is shard k's RemoteOptimizer (None when no
    parameter was assigned to it).
    """

    def __init__(self, params, optimizer=None, rule=None, server=None, **options):
        self._shards, self._pool, self._closed = [], None, False
        self._owner = os.getpid()
        if not isinstance(server, (list, tuple)) or len(server) < 2:
            raise ValueError(f"server={server!r}: a ShardedRemoteOptimizer needs a list of at least two addresses")
        for a in server:
            if not isinstance(a, str) or not a:
                raise ValueError(
                    f"server={list(server)!r}: {a!r} is not a server address ('host:port', 'unix:/path' or 'auto')"
                )
        self.servers = list(server)
        if optimizer == "lbfgs":
            raise ValueError(
                "optimizer='lbfgs' across several servers: its step is one vector over every parameter "
                "(dot products of the whole model), which one server holds; give it one server"
            )
        groups = param_groups_of(params)
        flat = [p for g in groups for p in g["params"]]
        names = [n for g in groups for n in g.get("param_names") or [None] * len(g["params"])]
        # Bytes as the servers hold them: float32, whatever the client's dtype.
        owner = assign_shards([4 * p.numel() for p in flat], len(self.servers))
        # Each shard gets the non-empty part of every group (a session's groups
        # all have parameters); _local[k] lists (global group, [global flat index]).
        self._local = [[] for _ in self.servers]
        index = 0
        for gi, g in enumerate(groups):
            mine = defaultdict(list)
            for _ in g["params"]:
                mine[owner[index]].append(index)
                index += 1
            for k, idx in sorted(mine.items()):
                self._local[k].append((gi, idx))
        self._pool = ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="mur-shard")

        self._make = lambda k, shard_groups: RemoteOptimizer(
            shard_groups, optimizer=optimizer, rule=rule, server=self.servers[k], **options
        )

        def create(k):
            if not self._local[k]:
                return None
            return self._make(
                k, [_part(groups[gi], [flat[i] for i in idx], [names[i] for i in idx]) for gi, idx in self._local[k]]
            )

        try:
            made, errors = self._on_shards(create, range(len(self.servers)))
            self._shards = [made.get(k) for k in range(len(self.servers))]
            if errors:
                k = min(errors)
                raise _shard_error(k, self.servers[k], errors[k], "could not create its session") from errors[k]
            first = next(o for o in self._shards if o is not None)
            self.optimizer_name, self.rule_name = first.optimizer_name, first.rule_name
            self._shard_of = {p: owner[i] for i, p in enumerate(flat)}
            self._ready = False
            torch.optim.Optimizer.__init__(self, groups, dict(first.defaults))  # not a session of its own
            self._ready = True
            self._broken = None  # set when shards applied different steps (see step)
        except BaseException:
            self.close()
            raise

    # -- where things are ------------------------------------------------------
    @property
    def shards(self):
        return list(self._shards)

    def shard_of(self, p):
        """The index (into ``servers``) of the shard holding parameter p."""
        return self._shard_of[p]

    @property
    def transport(self):
        """The shards' transport ("shm" or "grpc"), or "mixed"."""
        ts = {o.transport for o in self._shards if o is not None}
        return ts.pop() if len(ts) == 1 else "mixed"

    @property
    def lane_steps(self):
        return sum(o.lane_steps for o in self._shards if o is not None)

    @property
    def session_id(self):
        """Each shard's session id (None: no parameter on that shard, or closed)."""
        return [o.session_id if o is not None else None for o in self.__dict__.get("_shards", [])]

    @property
    def state(self):
        d = self.__dict__
        if not d.get("_ready"):
            return d.setdefault("_local_state", defaultdict(dict))
        return _State(self)

    @state.setter
    def state(self, value):
        self.__dict__["_local_state"] = value  # torch's Optimizer.__init__; the servers hold the truth

    def add_param_group(self, param_group):
        """torch's add_param_group; once the shards exist, the group's
        parameters are assigned by the same rule, continuing from the bytes
        each shard holds (so the same sequence of groups gives the same
        shards), and join their shards' sessions. A group every shard refuses
        (a bad hyperparameter) leaves the optimizer as it was."""
        if not self.__dict__.get("_ready"):
            torch.optim.Optimizer.add_param_group(self, param_group)
            return
        self._check_usable()
        gi = len(self.param_groups)
        torch.optim.Optimizer.add_param_group(self, param_groups_of([param_group])[0])  # torch's checks and defaults
        group = self.param_groups[gi]
        load = [sum(4 * p.numel() for p in self._shard_of if self._shard_of[p] == k) for k in range(len(self.servers))]
        owner = dict(enumerate(assign_shards([4 * p.numel() for p in group["params"]], len(self.servers), load)))
        start = sum(len(g["params"]) for g in self.param_groups[:gi])
        parts = defaultdict(list)
        for i in range(len(group["params"])):
            parts[owner[i]].append(start + i)
        flat = [p for g in self.param_groups for p in g["params"]]
        names = [n for g in self.param_groups for n in g.get("param_names") or [None] * len(g["params"])]

        def join(k):
            part = _part(group, [flat[i] for i in parts[k]], [names[i] for i in parts[k]])
            if self._shards[k] is None:
                self._shards[k] = self._make(k, [part])
            else:
                self._shards[k].add_param_group(part)

        _, errors = self._on_shards(join, sorted(parts))
        joined = [k for k in sorted(parts) if k not in errors]
        for k in joined:
            self._local[k].append((gi, parts[k]))
        for i, k in owner.items():
            if k in joined:
                self._shard_of[group["params"][i]] = k
        if errors:
            if joined:  # some shards hold part of the group: the shards no longer agree
                self._broken = f"shards {joined} took a parameter group that shards {sorted(errors)} refused"
            else:
                del self.param_groups[gi:]
            k = min(errors)
            raise _shard_error(k, self.servers[k], errors[k], "refused the parameter group") from errors[k]

    # -- helpers ----------------------------------------------------------------
    def _on_shards(self, fn, ks):
        """fn(k) on every shard k of ks at once (gRPC calls release the GIL);
        ({k: result}, {k: exception})."""
        futures = {k: self._pool.submit(fn, k) for k in ks}
        done, errors = {}, {}
        for k, f in futures.items():
            try:
                done[k] = f.result()
            except BaseException as e:  # noqa: B902 - reported per shard by the caller
                errors[k] = e
        return done, errors

    def _check_usable(self):
        if self._closed:
            raise FailedPreconditionError("this ShardedRemoteOptimizer is closed")
        if self._broken is not None:
            raise FailedPreconditionError(
                f"the shards applied different steps ({self._broken}); restore every shard from a checkpoint "
                "with load_state_dict() before stepping again"
            )

    def _push_hypers(self):
        """Global param_groups (schedulers edit them) -> every shard's groups."""
        for k, o in enumerate(self._shards):
            if o is None:
                continue
            for (gi, _), local in zip(self._local[k], o.param_groups):
                for key, v in self.param_groups[gi].items():
                    if key not in ("params", "param_names"):
                        local[key] = v

    # -- the step ---------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One step on every shard, all or nothing across shards: every shard
        with a gradient validates it first (concurrently); only if all accept
        does each apply it (concurrently). A refusal raises the refusing
        shard's error, naming it, and no shard has changed."""
        self._check_usable()
        if self.mode == "eval":
            raise FailedPreconditionError(
                "step() in eval mode: the Schedule-Free parameters hold x, not y; call opt.train() first"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._push_hypers()
        live = [
            k
            for k, o in enumerate(self._shards)
            if o is not None and any(p.grad is not None for g in o.param_groups for p in g["params"])
        ]
        if not live:
            return loss
        if len(live) > 1:  # one shard's own step is already all or nothing
            _, errors = self._on_shards(lambda k: self._shards[k]._validate_step(), live)
            if errors:
                k = min(errors)
                others = "".join(
                    f"; shard {j} ({self.servers[j]}) also refused it: {errors[j]}" for j in sorted(errors) if j != k
                )
                lost = isinstance(errors[k], (ConnectionLostError, DeadlineExceededError))
                what = "could not be reached to validate the step" if lost else "refused the step"
                raise _shard_error(
                    k, self.servers[k], errors[k], f"{what}, which no shard applied{others}"
                ) from errors[k]
        _, errors = self._on_shards(lambda k: self._shards[k].step(), live)
        if errors:
            # Validated everywhere, then failed on these shards even after their
            # clients' retries (a server down for longer than reconnect_timeout).
            # Whether a failed shard's server applied it before failing is not
            # known: no further step until a checkpoint makes the shards agree.
            applied = [k for k in live if k not in errors]
            k = min(errors)
            self._broken = (
                f"shards {applied} applied a step that shards {sorted(errors)} failed to apply"
                if applied
                else f"shards {sorted(errors)} failed to apply a validated step"
            )
            raise _shard_error(
                k,
                self.servers[k],
                errors[k],
                f"failed to apply a step the other shards {'applied ' + str(applied) if applied else 'validated'}",
            ) from errors[k]
        return loss

    # -- Schedule-Free: train() / eval() on every shard that has its parameters ---
    def _schedule_free_shards(self):
        shards = [o for o in self._shards if o is not None and o._schedule_free_pairs()]
        if not shards:
            raise ValueError(
                "train()/eval(): no parameter group is optimized by schedule_free_adamw; only Schedule-Free "
                "has an evaluation point"
            )
        return shards

    @property
    def mode(self):
        """ "eval" between eval() and train() (RemoteOptimizer.mode), else "train"."""
        live = [o for o in getattr(self, "_shards", []) if o is not None]
        return "eval" if any(o.mode == "eval" for o in live) else "train"

    def eval_params(self):
        """{param: x} of the Schedule-Free parameters, from every shard (RemoteOptimizer.eval_params)."""
        return {p: x for o in self._schedule_free_shards() for p, x in o.eval_params().items()}

    def eval(self):
        """RemoteOptimizer.eval() on every shard holding Schedule-Free parameters."""
        for o in self._schedule_free_shards():
            o.eval()
        return self

    def train(self, mode=True):
        """RemoteOptimizer.train() on every shard holding Schedule-Free parameters."""
        if not mode:
            return self.eval()
        for o in self._schedule_free_shards():
            o.train()
        return self

    # -- checkpoints ------------------------------------------------------------
    def _index_maps(self):
        """For shard k: its local flat parameter index -> the global flat index."""
        return [[i for _, idx in local for i in idx] for local in self._local]

    def state_dict(self):
        """torch's format keyed by the global parameter index: "state" gathered
        from every shard's server, "param_groups" with the hyperparameters."""
        if self._closed:
            raise FailedPreconditionError("this ShardedRemoteOptimizer is closed")
        self._push_hypers()
        live = [k for k, o in enumerate(self._shards) if o is not None]
        sds, errors = self._on_shards(lambda k: self._shards[k].state_dict(), live)
        if errors:
            k = min(errors)
            raise _shard_error(k, self.servers[k], errors[k], "could not export its state") from errors[k]
        maps, state = self._index_maps(), {}
        for k, sd in sds.items():
            for li, st in sd["state"].items():
                state[maps[k][li]] = st
        sd = {"state": dict(sorted(state.items())), "param_groups": _numbered(self.param_groups)}
        if self.mode == "eval":  # the state holds y (each shard's state_dict); a load comes up in eval mode
            sd["mode"] = "eval"
        return sd

    def _split(self, state_dict):
        """A global torch-format state_dict -> one per shard (its local indices),
        every structural check made before any server is touched."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(
                f"load_state_dict: {len(groups) if isinstance(groups, (list, tuple)) else 'no'} "
                f"param_groups, this optimizer has {len(self.param_groups)}"
            )
        position = {}
        for gi, (g, ours) in enumerate(zip(groups, self.param_groups)):
            ids = list(g.get("params", ()))
            if len(ids) != len(ours["params"]):
                raise ValueError(
                    f"load_state_dict: param_groups[{gi}] has {len(ids)} parameters, this optimizer's "
                    f"has {len(ours['params'])}"
                )
            for pid in ids:
                position[pid] = len(position)
        state = state_dict.get("state", {})
        for key in state:
            if key not in position:
                raise ValueError(f"load_state_dict: state for parameter {key!r}, which no param_group lists")
        by_global = {position[key]: st for key, st in state.items()}
        out = {}
        for k, o in enumerate(self._shards):
            if o is None:
                continue
            local_groups, li = [], 0
            sub_state = {}
            for gi, idx in self._local[k]:
                ids = []
                for gidx in idx:
                    if gidx in by_global:
                        sub_state[li] = by_global[gidx]
                    ids.append(li)
                    li += 1
                local_groups.append({**{key: v for key, v in groups[gi].items() if key != "params"}, "params": ids})
            sub = {"state": sub_state, "param_groups": local_groups}
            try:
                o._check_torch_algorithm(sub)
            except ValueError as e:
                raise ValueError(str(e).replace("load_state_dict:", f"load_state_dict (shard {k}):", 1)) from None
            out[k] = sub
        return out

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """Loads a state_dict of torch's format (this class's, a single-server
        RemoteOptimizer's, or the matching torch.optim class's) into every
        shard, all or nothing: each shard's state is saved first, and if any
        shard refuses its part, the shards already loaded are restored."""
        if self._closed:
            raise FailedPreconditionError("this ShardedRemoteOptimizer is closed")
        subs = self._split(state_dict)
        saved, errors = self._on_shards(lambda k: self._shards[k].state_dict(), subs)
        if errors:
            k = min(errors)
            raise _shard_error(k, self.servers[k], errors[k], "could not export its state") from errors[k]
        _, errors = self._on_shards(lambda k: self._shards[k].load_state_dict(subs[k]), subs)
        if errors:
            ok = [k for k in subs if k not in errors]
            self._on_shards(lambda k: self._shards[k].load_state_dict(saved[k]), ok)
            k = min(errors)
            raise _shard_error(
                k, self.servers[k], errors[k], "refused its part of the state_dict (no shard changed)"
            ) from errors[k]
        for g, saved_g in zip(self.param_groups, state_dict["param_groups"]):
            for key, v in saved_g.items():
                if key != "params":
                    g[key] = v
        self._broken = None  # every shard holds the checkpoint's state now
        if state_dict.get("mode") == "eval":
            self.eval()

    def _import_param_state(self, p, value):
        """One parameter's torch-style state into its shard (``opt.state[p] = ...``)."""
        k = self._shard_of.get(p)
        if k is None:
            raise KeyError("this parameter is not one of this optimizer's")
        o = self._shards[k]
        li = next(i for i, q in enumerate(q for g in o.param_groups for q in g["params"]) if q is p)
        o.load_state_dict({"state": {li: dict(value)}, "param_groups": _numbered(o.param_groups)})

    # -- lifetime ---------------------------------------------------------------
    def close(self):
        """Closes every shard's session (concurrently) and its servers started by "auto"."""
        self._closed = True
        shards = [k for k, o in enumerate(getattr(self, "_shards", [])) if o is not None]
        pool = getattr(self, "_pool", None)
        if pool is not None:
            if shards:
                self._on_shards(lambda k: self._shards[k].close(), shards)
            pool.shutdown(wait=True)
            self._pool = None

    # pickling, copying and __del__: RemoteOptimizer's (TypeError; close() on collection).


__all__ = ["ShardedRemoteOptimizer", "assign_shards"]
