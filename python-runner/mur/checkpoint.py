"""The checkpoint codec: a session's exported StateFrames <-> torch's
optimizer state format ({param: {"step": tensor, slot: tensor, ...}}), and
what a RemoteOptimizer's state_dict adds to torch's ("mur").

A state_dict holds every state tensor once (torch's "state", which the
matching torch.optim class loads too) and, under "mur", the client's step
number and the server's float32 value of every parameter ("values", by
torch's flat parameter index: load_state_dict restores the parameters with
the state, bit for bit, and for parameters that are not float32 it is the
master the client's values are cast from). For Adam that is 1.5x
torch.optim's state_dict. State dicts of the earlier format (the whole
export under "mur"["frames"]) still load."""

import math
import numbers
from collections import defaultdict

import numpy as np
import torch

from ._proto.mur.v1 import optimizer_pb2 as pb
from .planes.base import f32_bytes, read_only_view

FORMAT = 2


def _slots(frames, pids):
    """{pid: {slot: bytes}} of the chunks in frames (slot "": parameter values)."""
    parts = {}
    for f in frames:
        if f.HasField("chunk") and f.chunk.param_id in pids:
            parts.setdefault(f.chunk.param_id, {}).setdefault(f.chunk.slot, []).append(f.chunk.data)
    return {pid: {slot: b"".join(c) for slot, c in slots.items()} for pid, slots in parts.items()}


def torch_state(frames, by_id):
    """A checkpoint as torch keeps optimizer state: {param: {"step": tensor(float),
    slot: tensor shaped like param (a one-element slot: 0-dim), ...}} with the
    slot names the server exports ("exp_avg", ..., rule slots as "rule.x")."""
    header = frames[0].header if frames and frames[0].HasField("header") else pb.StateHeader()
    steps = {c.param_id: c.steps for c in header.step_counts}
    parts = _slots(frames, by_id)
    state = defaultdict(dict)
    for pid, p in by_id.items():
        slots = {k: v for k, v in parts.get(pid, {}).items() if k}
        if not slots and not steps.get(pid):
            continue  # never stepped: torch has no state for it either
        st = {"step": torch.tensor(float(steps.get(pid, 0)))}
        for slot, data in slots.items():
            t = torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())
            t = t.view(_slot_shape(slot, p.shape, t.numel()))
            st[slot] = t.to(device=p.device)
        state[p] = st
    return state


def _slot_shape(slot, shape, n):
    """torch's shape of a slot: the parameter's, () for one element, and
    Adafactor's row and column means [..., R, 1] and [..., 1, C]."""
    if slot == "row_var" and len(shape) >= 2:
        return (*shape[:-1], 1)
    if slot == "col_var" and len(shape) >= 2:
        return (*shape[:-2], 1, shape[-1])
    return shape if n == math.prod(shape) else () if n == 1 else (n,)


def values(frames, by_id):
    """{pid: the server's float32 values, flat} from a checkpoint."""
    parts = _slots(frames, by_id)
    return {pid: torch.from_numpy(np.frombuffer(s[""], dtype=np.float32).copy()) for pid, s in parts.items() if "" in s}


def mur_entry(step, frames, pids, by_id):
    """state_dict()["mur"]: the step number and the parameters' values, keyed like torch's state (flat index)."""
    index = {pid: i for i, pid in enumerate(pids)}
    return {"format": FORMAT, "step": step, "values": {index[pid]: t for pid, t in values(frames, by_id).items()}}


def step_counts(state, pids):
    """torch-style state ({index: {"step": ...}}) -> ParamStepCounts, checked."""
    counts = []
    for key, st in state.items():
        if "step" in st:
            v = st["step"]
            n = v.item() if torch.is_tensor(v) else v
            if not isinstance(n, numbers.Real) or n < 0 or n != int(n):
                raise ValueError(f"load_state_dict: state[{key!r}]['step'] = {v!r}: not a step count")
            counts.append(pb.ParamStepCount(param_id=pids[key], steps=int(n)))
    return counts


def state_tensors(state, pids):
    """torch-style state -> [(pid, slot, float32 bytes)] (ImportState slots), checked."""
    out = []
    for key, st in state.items():
        if key not in pids:
            raise ValueError(f"load_state_dict: state for parameter {key!r}, which no param_group lists")
        for slot, v in st.items():
            if slot == "step":
                continue
            if torch.is_tensor(v):
                out.append((pids[key], slot, f32_bytes(v)))
            elif v is not None:
                raise ValueError(f"load_state_dict: state[{key!r}][{slot!r}] = {v!r}: not a tensor")
    return out


def import_plan(state_dict, pids, session_id, spec):
    """What load_state_dict sends: (StateHeader, [(pid, slot, bytes)],
    {pid: float32 parameter values}, the client's step number or None to keep it).
    `pids` maps the state_dict's parameter keys (flat index) to param ids."""
    mur = state_dict.get("mur")
    if mur is None:  # a torch.optim state_dict: its state; the client's step numbering goes on
        state = state_dict.get("state", {})
        tensors = state_tensors(state, pids)
        header = pb.StateHeader(session_id=session_id, step_counts=step_counts(state, pids), last_step=0)
        return header, tensors, {}, None
    if "frames" in mur:  # the earlier format: the whole export
        frames = [pb.StateFrame.FromString(b) for b in mur["frames"]]
        header = frames[0].header
        header.session_id = session_id
        header.spec.CopyFrom(spec)
        known = set(pids.values())
        tensors, values = [], {}
        for pid, slots in _slots(frames[1:], known).items():
            for slot, data in slots.items():
                tensors.append((pid, slot, data))
                if slot == "":
                    values[pid] = read_only_view(data)
        return header, tensors, values, mur["step"]
    state = state_dict.get("state", {})
    tensors = state_tensors(state, pids)
    values = {}
    for key, t in mur.get("values", {}).items():
        if key not in pids:
            raise ValueError(f"load_state_dict: mur.values[{key!r}]: no such parameter")
        data = f32_bytes(t)
        tensors.append((pids[key], "", data))
        values[pids[key]] = read_only_view(data)
    header = pb.StateHeader(
        session_id=session_id, spec=spec, step_counts=step_counts(state, pids), last_step=mur["step"]
    )
    return header, tensors, values, mur["step"]
