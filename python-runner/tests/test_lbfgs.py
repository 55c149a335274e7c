"""L-BFGS (torch.optim.LBFGS) through the server: step(closure) runs the
closure here and the algorithm on the server, round by round. Against torch's
own LBFGS (both line-search modes) on every transport (grpc, grpc with every
round streamed, tcp, shm), a round's replay and refusal, state_dict both ways
with torch.optim.LBFGS, the other rules (strong_wolfe along their paths), a
SIGKILLed --state-dir server in the middle of a step under each rule on every
transport, and the refusals, by name."""

import pytest
import torch
from conftest import ADDON, CLI, start_tcp, stop

import mur
from mur.errors import FailedPreconditionError, InvalidArgumentError, MurError

needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")
# Every transport a round can take; "grpc-stream": grpc with a message limit so small that every round
# goes by StepStream in several chunks (the client's limit: the server's own is 64 MB).
TRANSPORTS = ["grpc", "grpc-stream", "tcp", "shm"]
# Steps short of convergence: near the minimum the losses of nearby points differ in their last
# float32 bit, and which way a comparison goes there depends on the order of float32 sums (torch
# 1.13 and 2.x take different paths there too); up to that floor the paths are the same.
CASES = [
    dict(max_iter=3),
    dict(line_search_fn="strong_wolfe", max_iter=3),
    dict(lr=0.5, max_iter=4, history_size=3),
    dict(line_search_fn="strong_wolfe", lr=3.0, max_iter=2, history_size=2),
]
IDS = ["none", "strong_wolfe", "none-short-history", "strong_wolfe-lr3-short-history"]
STEPS = 3


def problem(seed=0):
    """Logistic regression on 64 points in 5 dimensions: a Linear(5, 1) (two parameters, weight and bias)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.3 * torch.randn(64, generator=g) > 0).float()
    torch.manual_seed(seed)
    return torch.nn.Linear(5, 1), x, y


def closure_for(model, opt, x, y, counter):
    def closure():
        counter[0] += 1
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y) + 1e-3 * sum(
            (p**2).sum() for p in model.parameters()
        )
        loss.backward()
        return loss

    return closure


def run(model, opt, x, y, steps=STEPS):
    """Per step: the returned (first) loss, the closure evaluations, the flat parameters."""
    out = []
    for _ in range(steps):
        n = [0]
        loss = opt.step(closure_for(model, opt, x, y, n))
        out.append(
            (float(loss.detach()), n[0], torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
        )
    return out


@pytest.fixture(scope="module")
def tcp_server():
    proc, info = start_tcp()
    try:
        yield f"127.0.0.1:{info['port']}"
    finally:
        stop(proc)


def remote(model, server, transport, rule="additive", **h):
    """A RemoteOptimizer for lbfgs on `transport` (a TRANSPORTS name); with "grpc-stream" every round is
    counted by StepStream's begin frames in the returned list (round, loss), and none goes unary."""
    if transport == "shm" and not ADDON.exists():
        pytest.skip("the shm transport needs the native engine (make native-engine)")
    opt = mur.RemoteOptimizer(
        model.parameters(), optimizer="lbfgs", rule=rule, server=server, transport=transport.split("-")[0], **h
    )
    streamed = []
    if transport == "grpc-stream":
        opt._caps.max_message_bytes, opt._caps.chunk_bytes = 16, 8  # 8-byte chunks: each gradient in pieces
        real = opt._conn.stub.StepStream

        def spy(frames, **k):
            def seen():
                for f in frames:
                    if f.HasField("begin"):
                        streamed.append((f.begin.round, f.begin.loss))
                    yield f

            return real(seen(), **k)

        opt._conn.stub.StepStream = spy

        def unary(*a, **k):
            raise AssertionError("a round went unary: it exceeds the (client's) message limit")

        opt._conn.raw_step = unary
    return opt, streamed


@needs_server
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("h", CASES, ids=IDS)
def test_torch_parity(tcp_server, transport, h):
    """The same closure evaluations and, to float32 rounding, the same trajectory as torch.optim.LBFGS.
    Both sides compute the closure with the same torch ops; the server's dot products are float64
    sums rounded to float32, torch's float32 BLAS sums: they differ by about one ulp each, and L-BFGS
    carries that along. Measured: at most 2.4e-6 on these parameters (|w| < 3) over 3 steps, under
    torch 1.13 and 2.15 alike (which differ from each other by as much); 2e-5 leaves room and is far
    below any difference of formula (>= 1e-2 after one step)."""
    ref, x, y = problem()
    mine, _, _ = problem()
    want = run(ref, torch.optim.LBFGS(ref.parameters(), **h), x, y)
    opt, streamed = remote(mine, tcp_server, transport, **h)
    try:
        assert opt.transport == transport.split("-")[0]
        got = run(mine, opt, x, y)
    finally:
        opt.close()
    if transport == "grpc-stream":
        assert len(streamed) == sum(n for _, n, _ in got), "every closure evaluation is one streamed round"
        assert [r for r, _ in streamed[:2]] == [0, 1] and streamed[0][1] == got[0][0]
    for k, ((lw, nw, pw), (lg, ng, pg)) in enumerate(zip(want, got)):
        assert ng == nw, f"step {k + 1}: {ng} closure evaluations, torch {nw}"
        assert abs(lg - lw) <= 2e-5 * max(1.0, abs(lw)), f"step {k + 1}: loss {lg} vs torch {lw}"
        assert (pg - pw).abs().max().item() <= 2e-5, f"step {k + 1}: {pg} vs torch {pw}"


@needs_server
def test_state_dict_both_ways_with_torch(server):
    """A RemoteOptimizer's state_dict loads into torch.optim.LBFGS and torch's into a RemoteOptimizer:
    both go on as the optimizer they came from."""
    h = dict(history_size=4, max_iter=3)
    a, x, y = problem()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="lbfgs", rule="additive", server=server, **h)
    try:
        run(a, opt, x, y, steps=2)
        sd = opt.state_dict()
        st = sd["state"][0]
        assert isinstance(st["old_dirs"], list) and len(st["old_dirs"]) == len(st["ro"]) > 0
        assert st["d"].shape == (6,) and isinstance(st["n_iter"], int)
        b, _, _ = problem()
        b.load_state_dict(a.state_dict())
        torch_opt = torch.optim.LBFGS(b.parameters(), **h)
        torch_opt.load_state_dict({k: v for k, v in sd.items() if k != "mur"})
        want = run(b, torch_opt, x, y, steps=2)
        got = run(a, opt, x, y, steps=2)
        for (_, nw, pw), (_, ng, pg) in zip(want, got):
            assert ng == nw and (pg - pw).abs().max().item() <= 2e-5
        # And back: torch's state_dict into a fresh RemoteOptimizer.
        c, _, _ = problem()
        c.load_state_dict(b.state_dict())
        opt2 = mur.RemoteOptimizer(c.parameters(), optimizer="lbfgs", rule="additive", server=server, **h)
        try:
            opt2.load_state_dict(torch_opt.state_dict())
            want = run(b, torch_opt, x, y, steps=2)
            got = run(c, opt2, x, y, steps=2)
            for (_, nw, pw), (_, ng, pg) in zip(want, got):
                assert ng == nw and (pg - pw).abs().max().item() <= 2e-5
        finally:
            opt2.close()
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("h", [dict(), dict(line_search_fn="strong_wolfe")], ids=["none", "strong_wolfe"])
def test_to_convergence(server, h):
    """torch's defaults (max_iter 20): the same minimum. The number of evaluations on the way is not
    compared: at the float32 noise floor it is decided by the order of float32 sums (see CASES)."""
    ref, x, y = problem()
    mine, _, _ = problem()
    want = run(ref, torch.optim.LBFGS(ref.parameters(), **h), x, y, steps=2)
    opt = mur.RemoteOptimizer(mine.parameters(), optimizer="lbfgs", rule="additive", server=server, **h)
    try:
        got = run(mine, opt, x, y, steps=2)
    finally:
        opt.close()
    # The minimum is flat to float32: points within 1e-3 of it have the same float32 loss to 1e-7.
    assert abs(got[-1][0] - want[-1][0]) <= 1e-6 and (got[-1][2] - want[-1][2]).abs().max().item() <= 2e-3


def losses_of(server, rule, steps, **h):
    """The loss before each of `steps` steps and after the last (closure evaluations of a fresh model)."""
    m, x, y = problem()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="lbfgs", rule=rule, server=server, **h)
    try:
        out = run(m, opt, x, y, steps=steps)
        final = float(closure_for(m, opt, x, y, [0])().detach())
    finally:
        opt.close()
    return [loss for loss, _, _ in out] + [final]


@needs_server
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"], ids=["none", "strong_wolfe"])
def test_rules_other_than_additive_decrease_the_loss(server, line_search_fn):
    for rule, h in [
        ("multiplicative", dict(lr=0.5, lr_out=0.5)),
        ("hybrid", dict(lr=0.5, lr_out=0.5)),
        ("exp_sign", dict(lr=0.1)),
    ]:
        losses = losses_of(server, rule, 3, max_iter=5, line_search_fn=line_search_fn, **h)
        assert losses[-1] < losses[0], f"{rule}: {losses}"


@needs_server
@pytest.mark.parametrize("rule", ["multiplicative", "hybrid"])
def test_strong_wolfe_along_the_rules_path(server, rule):
    """With the defaults (lr 1, lr_out 10 lr) a step of length 1 through the multiplicative term is far
    too long: line_search_fn None takes it, strong_wolfe searches t along the rule's path x(t) (its slope
    g.x'(t)) and the loss falls at every step, below what one step of None reaches."""
    sw = losses_of(server, rule, 4, max_iter=5, line_search_fn="strong_wolfe")
    assert all(b < a for a, b in zip(sw, sw[1:])), f"strong_wolfe: {sw}"
    none = losses_of(server, rule, 1, max_iter=5)
    assert sw[1] < none[1] and sw[-1] < none[1], f"strong_wolfe {sw} vs one step of None {none}"


@needs_server
def test_refusals(server):
    m, x, y = problem()
    with pytest.raises(ValueError, match="L-BFGS takes one"):
        mur.RemoteOptimizer([{"params": [m.weight]}, {"params": [m.bias]}], optimizer="lbfgs", server=server)
    with pytest.raises(ValueError, match="one server"):
        mur.RemoteOptimizer(m.parameters(), optimizer="lbfgs", server=[server, server])
    for k, v in [("history_size", 0), ("max_iter", 0), ("line_search_fn", "backtracking"), ("tolerance_grad", -1.0)]:
        with pytest.raises(InvalidArgumentError, match=k):
            mur.RemoteOptimizer(m.parameters(), optimizer="lbfgs", server=server, **{k: v})
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="lbfgs", server=server)
    try:
        with pytest.raises(ValueError, match="pass a closure"):
            opt.step()
        with pytest.raises(ValueError, match="one parameter group"):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    finally:
        opt.close()


@needs_server
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_round_replays_and_another_request_under_it_is_refused(tcp_server, transport):
    """Round 0 sent twice as it was: the server answers it again (replayed, which a first attempt reports
    as another writer) and takes nothing; under another loss it is refused. A new step number then
    rolls the step back (restart, the parameters before it) and the run is torch's from there."""
    h = dict(max_iter=3)
    ref, x, y = problem()
    mine, _, _ = problem()
    want = run(ref, torch.optim.LBFGS(ref.parameters(), **h), x, y, steps=2)
    opt, _ = remote(mine, tcp_server, transport, **h)
    try:
        x0 = torch.cat([p.detach().reshape(-1) for p in mine.parameters()]).clone()
        loss = closure_for(mine, opt, x, y, [0])()
        prep = opt._prepare_step(1)
        prep.round, prep.loss = 0, float(loss.detach())
        send = torch.no_grad()(opt._plane.step)  # as step() sends it
        send(prep)
        assert opt._plane.last_reply.evaluate and opt._plane.last_reply.round == 0
        point = torch.cat([p.detach().reshape(-1) for p in mine.parameters()]).clone()
        assert not torch.equal(point, x0), "round 0 moved the parameters to the first point to evaluate"
        with pytest.raises(MurError, match="step 1 had already been applied"):
            send(prep)  # replayed: a first attempt that finds its round taken is another writer's
        prep.loss += 1.0
        with pytest.raises(FailedPreconditionError, match="round: 0 of step 1 was already taken with a different"):
            send(prep)
        assert torch.equal(torch.cat([p.detach().reshape(-1) for p in mine.parameters()]), point)
        # Step 2 while step 1 is in progress: step 1 is rolled back, the parameters are x0 again.
        prep.number = 2
        send(prep)
        assert "step 1 was still in progress" in opt._plane.last_reply.restart
        assert torch.equal(torch.cat([p.detach().reshape(-1) for p in mine.parameters()]), x0)
        opt._step_no = 2  # the next step() is step 3, from x0 and a history the refusals left empty
        got = run(mine, opt, x, y, steps=2)
    finally:
        opt.close()
    for (_, nw, pw), (_, ng, pg) in zip(want, got):
        assert ng == nw and (pg - pw).abs().max().item() <= 2e-5  # the tolerance of test_torch_parity


@needs_server
def test_a_round_above_the_servers_message_limit_streams(tcp_server):
    """A server started with --max-message-mb 1 and a 300,000-element parameter (1.2 MB of gradient per
    round: Step would be RESOURCE_EXHAUSTED): every round goes by StepStream, and the steps are those of
    a server without the limit, bit for bit."""
    n = 300_000
    a = torch.linspace(1.0, 10.0, n)

    def steps(server):
        w = torch.nn.Parameter(torch.zeros(n))
        opt = mur.RemoteOptimizer([w], optimizer="lbfgs", rule="additive", server=server, transport="grpc", max_iter=3)
        try:

            def closure():
                opt.zero_grad()
                loss = (0.5 * a * (w - 1.0) ** 2).sum()
                loss.backward()
                return loss

            return [(float(opt.step(closure)), w.detach().clone()) for _ in range(2)]
        finally:
            opt.close()

    proc, info = start_tcp("--max-message-mb", 1, "--chunk-kb", 256)  # chunks with room for their framing
    try:
        got = steps(f"127.0.0.1:{info['port']}")
    finally:
        stop(proc)
    want = steps(tcp_server)
    for (lg, pg), (lw, pw) in zip(got, want):
        assert lg == lw and torch.equal(pg, pw)


@needs_server
def test_float64_parameters_on_shm_take_every_point(tcp_server):
    """float64 parameters keep their own memory on shm (the arena holds the float32 master): after each
    round every one takes the point the server wrote there, cast, so the closure runs where it does on
    tcp (whose replies carry the points): the same evaluations and parameters, bit for bit."""
    out = {}
    for transport in ("tcp", "shm"):
        m, x, y = problem()
        m, x = m.double(), x.double()
        opt, _ = remote(m, tcp_server, transport, max_iter=3)
        try:
            assert opt.transport == transport and m.weight.dtype == torch.float64
            out[transport] = run(m, opt, x, y.double(), steps=2)
        finally:
            opt.close()
    for (lt, nt, pt), (ls, ns, ps) in zip(out["tcp"], out["shm"]):
        assert (ls, ns) == (lt, nt) and torch.equal(ps, pt)


def start_state_dir_server(transport, scratch, port=0):
    """A --state-dir server for `transport` (tcp: on TCP, `port` 0 the first time, then the same one;
    else on a Unix socket), with stdin kept open (it dies with this test process): (process, address)."""
    from pathlib import Path

    from test_transport import start_cli

    state = Path(scratch) / "state"
    if transport == "tcp":
        proc, info = start_tcp("--state-dir", state, port=port)
        return proc, f"127.0.0.1:{info['port']}"
    sock = Path(scratch) / "s.sock"
    return start_cli(sock, "--state-dir", str(state)), f"unix:{sock}"


@needs_server
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_killed_in_the_middle_of_a_step(scratch, transport, rule):
    """A --state-dir server SIGKILLed during a step's closure evaluations: the client's next round is
    answered with a restart (on shm: in the new server's arena, which the client maps), step(closure)
    evaluates again from the parameters before that step, and the run ends bit for bit where an
    uninterrupted one does (strong_wolfe, along each rule's path)."""
    from test_transport import stop_proc

    h = dict(max_iter=4, line_search_fn="strong_wolfe")
    ref, x, y = problem()
    with mur.LocalServer() as s:
        opt = mur.RemoteOptimizer(ref.parameters(), optimizer="lbfgs", rule=rule, server=s.address, **h)
        try:
            want = run(ref, opt, x, y, steps=3)
        finally:
            opt.close()
    proc, address = start_state_dir_server(transport, scratch)
    procs = [proc]
    try:
        m, _, _ = problem()
        opt, _ = remote(m, address, transport, rule=rule, reconnect_timeout=30, **h)
        try:
            assert opt.transport == transport.split("-")[0]
            got = run(m, opt, x, y, steps=1)
            n = [0]
            inner = closure_for(m, opt, x, y, n)
            port = int(address.rsplit(":", 1)[1]) if transport == "tcp" else 0

            def closure():
                if n[0] == 2:  # the third evaluation of step 2: the server dies and comes back
                    stop_proc(procs[-1])
                    procs.append(start_state_dir_server(transport, scratch, port)[0])
                return inner()

            loss = opt.step(closure)
            got.append(
                (float(loss.detach()), n[0], torch.cat([p.detach().reshape(-1) for p in m.parameters()]).clone())
            )
            got += run(m, opt, x, y, steps=1)
        finally:
            opt.close()
    finally:
        for p in procs:
            stop_proc(p)
    assert got[1][1] == want[1][1] + 3, "step 2 evaluated three times before the kill, then whole again"
    for (lw, _, pw), (lg, _, pg) in zip(want, got):
        assert lg == lw and torch.equal(pg, pw)


@needs_server
def test_server_auto_and_the_defaults_table():
    """server="auto" checks names before starting its server (mur.lbfgs.DEFAULTS, which is the server's
    table) and picks shm for lbfgs as for every optimizer; param_groups hold torch's values (max_eval
    filled in, whole numbers as ints)."""
    with pytest.raises(ValueError, match=r"momentum=0\.9: not a hyperparameter of lbfgs"):
        mur.RemoteOptimizer(torch.nn.Linear(2, 1).parameters(), optimizer="lbfgs", momentum=0.9)
    m, x, y = problem()
    opt = mur.RemoteOptimizer(m.parameters(), optimizer="lbfgs", max_iter=6)
    try:
        caps = {h.name: h for o in opt._caps.optimizers if o.name == "lbfgs" for h in o.hyperparameters}
        assert set(caps) == set(mur.lbfgs.DEFAULTS)
        for k, v in mur.lbfgs.DEFAULTS.items():
            if v is not None:
                assert caps[k].default_value.number_value == v, k
        g = opt.param_groups[0]
        assert (g["max_iter"], g["max_eval"], g["history_size"], g["line_search_fn"]) == (6, 7, 100, None)
        assert isinstance(g["history_size"], int)
        assert opt.transport == ("shm" if ADDON.exists() else "grpc")
        run(m, opt, x, y, steps=1)
    finally:
        opt.close()
