"""Sharding across servers (mur/sharded.py, docs/scale-out.md): the stable
assignment, the two-phase step (a refusal anywhere changes no shard), failures
naming the shard, checkpoints across shard counts, and torch.distributed
(DDP + ZeroRedundancyOptimizer, 2 gloo ranks x 2 servers)."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import max_diff
from conftest import net as _net

import mur
from mur.sharded import ShardedRemoteOptimizer, assign_shards


def net(seed=0):
    return _net(seed, sizes=(6, 16, 8, 3))


ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "ts-server" / "dist" / "src" / "cli.js"
ADDON = ROOT / "ts-server" / "native" / "build" / "Release" / "mur_native.node"
needs_native = pytest.mark.skipif(not (CLI.exists() and ADDON.exists()), reason="needs the built native server")
TRANSPORTS = ["shm", "tcp", "grpc"]


def data(steps, batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g), torch.randn(batch, 3, generator=g)) for _ in range(steps)]


def step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def bits(model):
    return [p.detach().clone().view(torch.int32) for p in model.parameters()]


def same_bits(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def servers():
    """Two servers (shards) for the module, freed at its end."""
    with mur.LocalServer() as a, mur.LocalServer() as b:
        yield [a.address, b.address]


@pytest.fixture(scope="module")
def tcp_servers():
    """Two servers on TCP loopback (port 0: the kernel's choice), for the tcp data plane."""
    procs = []
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    ["node", str(CLI), "--host", "127.0.0.1", "--port", "0", "--exit-with-stdin"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield [f"127.0.0.1:{json.loads(p.stdout.readline())['port']}" for p in procs]
    finally:
        for p in procs:
            _stop(p)


@pytest.fixture
def shards(request):
    """shards(transport): the two servers that transport needs."""
    return lambda transport: request.getfixturevalue("tcp_servers" if transport == "tcp" else "servers")


# -- assignment -----------------------------------------------------------------


def test_assignment_is_greedy_by_bytes_stable_and_balanced():
    # Worked by hand from the rule: 400 -> shard 0; 300 -> 1; 200 -> 2; 100 -> 2
    # (least loaded: 200); then the 50s, earlier first: index 2 -> 1 (300 = 300, lower shard), index 5 -> 2.
    sizes = [100, 400, 50, 300, 200, 50]
    got = assign_shards(sizes, 3)
    assert got == [2, 0, 1, 1, 2, 2]
    loads = [sum(s for s, k in zip(sizes, got) if k == j) for j in range(3)]
    assert max(loads) - min(loads) <= max(sizes)
    assert assign_shards(list(sizes), 3) == got  # a function of the sizes only
    assert assign_shards([8, 8, 8, 8], 2) == [0, 1, 0, 1]  # ties: earlier parameter, lower shard
    with pytest.raises(ValueError, match="shards=0"):
        assign_shards(sizes, 0)


def test_a_model_rebuilt_later_lands_on_the_same_shards(servers):
    a, b = net(0), net(5)  # other values, same shapes
    oa = mur.RemoteOptimizer(a.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=servers)
    ob = mur.RemoteOptimizer(b.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=servers)
    try:
        assert isinstance(oa, ShardedRemoteOptimizer)
        assert [oa.shard_of(p) for p in a.parameters()] == [ob.shard_of(p) for p in b.parameters()]
        assert {oa.shard_of(p) for p in a.parameters()} == {0, 1}
        held = [sum(p.numel() * 4 for p in a.parameters() if oa.shard_of(p) == k) for k in (0, 1)]
        assert abs(held[0] - held[1]) <= max(p.numel() * 4 for p in a.parameters())
    finally:
        oa.close()
        ob.close()


def test_bad_server_lists_are_refused(servers):
    m = net()
    with pytest.raises(ValueError, match="12"):
        mur.RemoteOptimizer(m.parameters(), server=[servers[0], 12])
    with pytest.raises(ValueError, match=r"server=\[\]"):
        mur.RemoteOptimizer(m.parameters(), server=[])
    # One address in a list is the single-server optimizer.
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="sgd", rule="additive", lr=0.1, server=servers[:1])
    try:
        assert type(opt) is mur.RemoteOptimizer
    finally:
        opt.close()


# -- the step -------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_shards_train_like_torch_and_like_one_server(shards, transport):
    servers = shards(transport)
    data30 = data(30)
    for rule in ("additive", "hybrid"):
        a, b, c = net(), net(), net()
        kw = dict(optimizer="adam", rule=rule, lr=0.01, transport=transport)
        if rule == "hybrid":
            kw.update(lr_in=0.5, lr_out=0.01, gamma=0.9)
        sharded = mur.RemoteOptimizer(a.parameters(), server=servers, **kw)
        single = mur.RemoteOptimizer(b.parameters(), server=servers[0], **kw)
        ref = torch.optim.Adam(c.parameters(), lr=0.01)
        try:
            assert sharded.transport == transport
            for x, y in data30:
                step(a, sharded, x, y)
                step(b, single, x, y)
                step(c, ref, x, y)
            assert max_diff(a, b) < 1e-6
            if rule == "additive":
                assert max_diff(a, c) < 1e-6
            assert max_diff(a, net()) > 1e-3  # it did train
        finally:
            sharded.close()
            single.close()


def _state_bits(opt):
    sd = opt.state_dict()
    return {k: {s: v.clone() for s, v in st.items()} for k, st in sd["state"].items()}


def _same_state(x, y):
    return x.keys() == y.keys() and all(
        x[k].keys() == y[k].keys() and all(torch.equal(x[k][s], y[k][s]) for s in x[k]) for k in x
    )


@needs_native
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_nan_in_one_shard_is_refused_by_it_and_changes_no_shard(shards, transport):
    servers = shards(transport)
    a, c = net(), net()
    opt = mur.RemoteOptimizer(
        a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=servers, transport=transport
    )
    ref = torch.optim.Adam(c.parameters(), lr=0.01)
    batches = data(6)
    try:
        for x, y in batches[:3]:
            step(a, opt, x, y)
            step(c, ref, x, y)
        before, state = bits(a), _state_bits(opt)
        victim = next(p for p in a.parameters() if opt.shard_of(p) == 1)
        opt.zero_grad()
        torch.nn.functional.mse_loss(a(batches[3][0]), batches[3][1]).backward()
        victim.grad.view(-1)[3] = float("nan")
        with pytest.raises(mur.InvalidArgumentError) as e:
            opt.step()
        assert f"shard 1 ({servers[1]})" in str(e.value) and "nan" in str(e.value).lower()
        assert e.value.shard == 1 and e.value.server == servers[1]
        assert same_bits(bits(a), before)  # shard 0 validated but applied nothing either
        assert _same_state(_state_bits(opt), state)
        # The next good step is the next step everywhere (no number was used up).
        for x, y in batches[3:]:
            step(a, opt, x, y)
            step(c, ref, x, y)
        assert max_diff(a, c) < 1e-6
    finally:
        opt.close()


@needs_native
def test_a_bad_hyperparameter_is_refused_naming_a_shard_and_changes_nothing(servers):
    a = net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=servers)
    try:
        x, y = data(1)[0]
        step(a, opt, x, y)
        before, state = bits(a), _state_bits(opt)
        opt.param_groups[0]["betas"] = (0.9, 1.5)
        with pytest.raises(mur.InvalidArgumentError, match=r"shard 0 .*refused the step.*1\.5"):
            step(a, opt, x, y)
        assert same_bits(bits(a), before) and _same_state(_state_bits(opt), state)
        opt.param_groups[0]["betas"] = (0.9, 0.999)
        step(a, opt, x, y)
        assert not same_bits(bits(a), before)
    finally:
        opt.close()


@needs_native
def test_a_group_added_later_is_sharded_by_the_same_rule_and_trains_like_torch(servers):
    a, c = net(), net()
    body = lambda m: list(m.parameters())[:4]  # noqa: E731
    head = lambda m: list(m.parameters())[4:]  # noqa: E731
    opt = mur.RemoteOptimizer(body(a), optimizer="adam", rule="additive", lr=0.01, server=servers)
    ref = torch.optim.Adam(body(c), lr=0.01)
    batches = data(12)
    try:
        for x, y in batches[:4]:
            step(a, opt, x, y)
            step(c, ref, x, y)
        with pytest.raises(mur.InvalidArgumentError, match=r"shard \d .*refused the parameter group"):
            opt.add_param_group({"params": head(a), "lr": -1.0})
        assert len(opt.param_groups) == 1
        opt.add_param_group({"params": head(a), "lr": 0.05})
        ref.add_param_group({"params": head(c), "lr": 0.05})
        held = [sum(4 * p.numel() for p in a.parameters() if opt.shard_of(p) == k) for k in (0, 1)]
        assert abs(held[0] - held[1]) <= max(4 * p.numel() for p in a.parameters())
        for x, y in batches[4:]:
            step(a, opt, x, y)
            step(c, ref, x, y)
        assert max_diff(a, c) < 1e-6
        assert sorted(opt.state_dict()["state"]) == list(range(6))
    finally:
        opt.close()


# -- checkpoints ------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("rule", ["additive", "hybrid"])
def test_a_state_dict_moves_from_two_shards_to_one_and_back(servers, rule):
    kw = (
        dict(optimizer="adam", rule=rule, lr=0.01, lr_in=0.5, gamma=0.9)
        if rule == "hybrid"
        else dict(optimizer="adam", rule=rule, lr=0.01)
    )
    batches = data(24)
    a = net()
    two = mur.RemoteOptimizer(a.parameters(), server=servers, **kw)
    opts = [two]
    try:
        for x, y in batches[:8]:
            step(a, two, x, y)
        sd = two.state_dict()
        assert sorted(sd["state"]) == list(range(len(list(a.parameters()))))
        b = net()
        b.load_state_dict(a.state_dict())
        one = mur.RemoteOptimizer(b.parameters(), server=servers[1], **kw)
        opts.append(one)
        one.load_state_dict(sd)
        for x, y in batches[8:16]:
            step(a, two, x, y)
            step(b, one, x, y)
        assert max_diff(a, b) < 1e-6
        c = net()
        c.load_state_dict(b.state_dict())
        back = mur.RemoteOptimizer(c.parameters(), server=list(reversed(servers)), **kw)
        opts.append(back)
        back.load_state_dict(one.state_dict())
        for x, y in batches[16:]:
            step(a, two, x, y)
            step(c, back, x, y)
        assert max_diff(a, c) < 1e-6
    finally:
        for o in opts:
            o.close()


@needs_native
def test_a_state_dict_that_does_not_fit_is_refused_before_any_shard_changes(servers):
    a = net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="additive", lr=0.01, server=servers)
    try:
        x, y = data(1)[0]
        step(a, opt, x, y)
        state = _state_bits(opt)
        sgd = torch.optim.SGD(net().parameters(), lr=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="not the state_dict of a adam optimizer"):
            opt.load_state_dict(sgd.state_dict())
        sd = opt.state_dict()
        sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
        with pytest.raises(ValueError, match="param_groups\\[0\\] has 5 parameters"):
            opt.load_state_dict(sd)
        # The server refuses a slot of the wrong size on shard 1: shard 0, loaded first, is rolled back.
        sd = opt.state_dict()
        k = next(i for i, p in enumerate(a.parameters()) if opt.shard_of(p) == 1)
        j = next(i for i, p in enumerate(a.parameters()) if opt.shard_of(p) == 0)
        sd["state"][j]["exp_avg"] = sd["state"][j]["exp_avg"] + 1
        sd["state"][k]["exp_avg"] = torch.zeros(7)
        with pytest.raises(mur.MurError, match=f"shard 1 \\({servers[1]}\\)"):
            opt.load_state_dict(sd)
        assert _same_state(_state_bits(opt), state)
    finally:
        opt.close()


# -- a shard failing between the phases -------------------------------------------


def _start_cli(sock, state):
    proc = subprocess.Popen(
        ["node", str(CLI), "--socket", str(sock), "--exit-with-stdin", "--state-dir", str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    line = proc.stdout.readline()  # the listening line: it serves from here on
    if not line:
        proc.wait(timeout=30)
        raise RuntimeError(f"the server exited with {proc.returncode}")
    assert json.loads(line)["socket"] == str(sock)
    return proc


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


@needs_native
@pytest.mark.parametrize("transport", ["shm", "grpc"])  # unix sockets: no tcp data plane
def test_a_durable_shard_killed_between_the_phases_takes_the_step_once(transport, scratch):
    """Shard 1's server is SIGKILLed after every shard validated a step and
    restarted on its --state-dir: its client's retry lands the step under the
    same number, so every shard applies it exactly once (equal to torch)."""
    d = Path(scratch)
    socks, procs = [d / "a.sock", d / "b.sock"], []
    opt = None
    try:
        procs = [[_start_cli(socks[i], d / f"state{i}")] for i in range(2)]
        a, c = net(), net()
        opt = mur.RemoteOptimizer(
            a.parameters(),
            optimizer="adam",
            rule="additive",
            lr=0.01,
            transport=transport,
            server=[f"unix:{s}" for s in socks],
            reconnect_timeout=30,
        )
        ref = torch.optim.Adam(c.parameters(), lr=0.01)
        shard = opt.shards[1]
        validate, kills = shard._validate_step, []

        def validate_then_kill():
            validate()
            if len(kills) in (0, 2) or len(kills) == 5:
                _stop(procs[1][-1])
                procs[1].append(_start_cli(socks[1], d / "state1"))
            kills.append(1)

        shard._validate_step = validate_then_kill
        for x, y in data(8):
            step(a, opt, x, y)
            step(c, ref, x, y)
        assert len(procs[1]) == 4  # three restarts happened
        assert max_diff(a, c) < 1e-6
        assert {float(st["step"]) for st in opt.state_dict()["state"].values()} == {8.0}  # every shard: 8 steps
    finally:
        if opt is not None:
            opt.close()
        for ps in procs:
            for p in ps:
                _stop(p)


@needs_native
def test_a_shard_that_stays_down_is_named_and_stops_further_steps(scratch):
    d = Path(scratch)
    socks = [d / "a.sock", d / "b.sock"]
    procs, opt = [], None
    try:
        procs = [_start_cli(socks[i], d / f"state{i}") for i in range(2)]
        a = net()
        opt = mur.RemoteOptimizer(
            a.parameters(),
            optimizer="adam",
            rule="additive",
            lr=0.01,
            transport="grpc",
            server=[f"unix:{s}" for s in socks],
            reconnect_timeout=0.5,
        )
        x, y = data(1)[0]
        step(a, opt, x, y)
        shard = opt.shards[1]
        validate = shard._validate_step

        def validate_then_kill():
            validate()
            _stop(procs[1])

        shard._validate_step = validate_then_kill
        with pytest.raises(mur.MurError, match=f"shard 1 \\(unix:{socks[1]}\\) failed to apply") as e:
            step(a, opt, x, y)
        assert e.value.server == f"unix:{socks[1]}"
        with pytest.raises(mur.FailedPreconditionError, match="applied a step that shards \\[1\\] failed"):
            step(a, opt, x, y)
    finally:
        if opt is not None:
            opt.close()
        for p in procs:
            _stop(p)


# -- torch.distributed: DDP + ZeroRedundancyOptimizer, 2 gloo ranks x 2 servers ---

STEPS, CHECKPOINT_AT, LR = 30, 15, 0.01


def _hypers(rule):
    return (
        dict(optimizer="adam", rule=rule, lr=LR, lr_in=0.5, gamma=0.9)
        if rule == "hybrid"
        else dict(optimizer="adam", rule=rule, lr=LR)
    )


def _rank(rank, world, store, servers, rule, out):
    """One DDP rank: half of every batch, ZeRO over mur (and over torch.optim.Adam)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pairs on loopback, whatever the host name resolves to
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        batches = data(STEPS, batch=16)
        runs = {"mur": dict(optimizer_class=mur.RemoteOptimizer, server=servers, **_hypers(rule))}
        if rule == "additive":
            runs["torch"] = dict(optimizer_class=torch.optim.Adam, lr=LR)
        for name, kw in runs.items():
            model = DDP(net())
            opt = ZeroRedundancyOptimizer(model.parameters(), **kw)
            if name == "mur":  # this rank's parameters, on both servers
                assert isinstance(opt.optim, ShardedRemoteOptimizer) and None not in opt.optim.shards
            for t, (x, y) in enumerate(batches):
                if t == CHECKPOINT_AT and name == "mur":
                    opt.consolidate_state_dict(to=0)
                    if rank == 0:
                        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict()}, f"{out}/ckpt.pt")
                half = slice(rank * 8, rank * 8 + 8)
                step(model, opt, x[half], y[half])
            if rank == 0:
                torch.save(model.module.state_dict(), f"{out}/{name}.pt")
            if name == "mur":
                opt.optim.close()
            dist.barrier()
        # The consolidated checkpoint loads into ZeRO on 2 ranks as well: each
        # rank's part goes to its shards (ZeRO writes optim.state[p] = ...).
        ckpt = torch.load(f"{out}/ckpt.pt")
        model = DDP(net())
        model.module.load_state_dict(ckpt["model"])
        opt = ZeroRedundancyOptimizer(model.parameters(), **runs["mur"])
        opt.load_state_dict(ckpt["opt"])
        for x, y in batches[CHECKPOINT_AT:]:
            half = slice(rank * 8, rank * 8 + 8)
            step(model, opt, x[half], y[half])
        if rank == 0:
            torch.save(model.module.state_dict(), f"{out}/resumed.pt")
        opt.optim.close()
    finally:
        dist.destroy_process_group()


@needs_native
@pytest.mark.parametrize("rule", ["additive", "hybrid"])
def test_two_ranks_on_two_servers_train_like_one_process(servers, rule):
    d = tempfile.mkdtemp(prefix="mur-ddp-")
    try:
        # fork would copy this process's gRPC state: spawn. 2 ranks, a file store: no port at all.
        ranks = mp.spawn(_rank, args=(2, f"{d}/store", servers, rule, d), nprocs=2, join=False)
        deadline = time.monotonic() + 240
        try:
            while not ranks.join(timeout=max(0.0, deadline - time.monotonic())):  # raises if a rank failed
                if time.monotonic() >= deadline:
                    raise AssertionError("the 2 ranks did not finish within 240 s")
        finally:
            for p in ranks.processes:
                if p.is_alive():
                    p.kill()
                p.join()
        batches = data(STEPS, batch=16)
        one = net()
        opt = mur.RemoteOptimizer(one.parameters(), server=servers[0], **_hypers(rule))
        try:
            for x, y in batches:
                step(one, opt, x, y)
        finally:
            opt.close()
        ddp = net()
        ddp.load_state_dict(torch.load(f"{d}/mur.pt"))
        assert max_diff(one, ddp) < 1e-6
        assert max_diff(one, net()) > 1e-3
        if rule == "additive":
            ref = net()
            ref.load_state_dict(torch.load(f"{d}/torch.pt"))
            assert max_diff(ref, ddp) < 1e-6
        # The checkpoint consolidated from 2 ranks continues in 1 process, on 1 server.
        ckpt = torch.load(f"{d}/ckpt.pt")
        resumed = net()
        resumed.load_state_dict(ckpt["model"])
        opt = mur.RemoteOptimizer(resumed.parameters(), server=servers[1], **_hypers(rule))
        try:
            opt.load_state_dict(ckpt["opt"])
            for x, y in batches[CHECKPOINT_AT:]:
                step(resumed, opt, x, y)
        finally:
            opt.close()
        assert max_diff(resumed, ddp) < 1e-6
        resumed.load_state_dict(torch.load(f"{d}/resumed.pt"))  # ... and in 2 ranks
        assert max_diff(resumed, ddp) < 1e-6
    finally:
        shutil.rmtree(d, ignore_errors=True)
