"""RemoteOptimizer against a live local server, and mur.reference against torch.optim."""

import io
from pathlib import Path

import grpc
import pytest
import torch
from conftest import max_diff, net

import mur
from mur import reference

CLI = Path(__file__).resolve().parents[2] / "ts-server" / "dist" / "src" / "cli.js"
needs_server = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)")


@pytest.fixture(scope="module")
def server():
    with mur.LocalServer() as s:
        yield s.address


def train(model, opt, steps, start=0, scheduler=None):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)) for _ in range(start + steps)]
    for x, y in data[start:]:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        if scheduler:
            scheduler.step()
    return loss


@pytest.mark.parametrize(
    "name,h",
    [
        ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
        ("adam", dict(amsgrad=True)),
        ("adagrad", {}),
        ("rmsprop", dict(centered=True)),
        ("adamw", {}),
    ],
)
def test_reference_additive_is_torch_optim(name, h):
    a, b = net(), net()
    train(
        a,
        getattr(
            torch.optim,
            {"sgd": "SGD", "adam": "Adam", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adamw": "AdamW"}[name],
        )(a.parameters(), **h),
        20,
    )
    train(b, reference.Optimizer(b.parameters(), optimizer=name, rule="additive", **h), 20)
    assert max_diff(a, b) < 1e-6  # float32, same ops up to order: rounding only


@needs_server
@pytest.mark.parametrize("rule", ["additive", "multiplicative", "hybrid", "exp_sign"])
def test_remote_matches_reference(server, rule):
    a, b = net(), net()
    h = dict(lr=0.01, gamma=0.5) if rule == "hybrid" else dict(lr=0.01)
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule=rule, server=server, **h)
    loss = train(a, opt, 20)
    train(b, reference.Optimizer(b.parameters(), optimizer="adam", rule=rule, **h), 20)
    opt.close()
    assert torch.is_tensor(loss), "step(closure) returns the loss"
    assert max_diff(a, b) < 1e-5  # float32 server vs float32 torch, 20 steps of rounding


@needs_server
def test_parameters_without_grad_are_skipped(server):
    a = net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="sgd", rule="hybrid", server=server, lr=0.1)
    frozen = [p.detach().clone() for p in a[2].parameters()]
    a[2].requires_grad_(False)
    train(a, opt, 3)
    assert all(torch.equal(p, q) for p, q in zip(a[2].parameters(), frozen))
    opt.close()


@needs_server
def test_lr_scheduler_and_param_groups(server):
    a, b = net(), net()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.05}]  # noqa: E731
    oa = mur.RemoteOptimizer(groups(a), optimizer="sgd", rule="multiplicative", server=server, lr=0.1, momentum=0.5)
    ob = reference.Optimizer(groups(b), optimizer="sgd", rule="multiplicative", lr=0.1, momentum=0.5)
    train(a, oa, 12, scheduler=torch.optim.lr_scheduler.StepLR(oa, step_size=4, gamma=0.5))
    train(b, ob, 12, scheduler=torch.optim.lr_scheduler.StepLR(ob, step_size=4, gamma=0.5))
    assert oa.param_groups[1]["lr"] == pytest.approx(0.05 * 0.125)
    assert max_diff(a, b) < 1e-5  # lr_out follows lr under the scheduler on both sides
    oa.close()


@needs_server
def test_checkpoint_resumes_bit_exactly(server):
    a = net()
    opt = mur.RemoteOptimizer(
        a.parameters(), optimizer="rmsprop", rule="hybrid", server=server, momentum=0.5, gamma=0.7
    )
    train(a, opt, 5)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt.state_dict()}, buf)
    train(a, opt, 5, start=5)
    buf.seek(0)
    ck = torch.load(buf)
    b = net(seed=3)
    b.load_state_dict(ck["model"])
    opt2 = mur.RemoteOptimizer(
        b.parameters(), optimizer="rmsprop", rule="hybrid", server=server, momentum=0.5, gamma=0.7
    )
    opt2.load_state_dict(ck["opt"])
    train(b, opt2, 5, start=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    opt.close()
    opt2.close()


@needs_server
def test_bad_hyperparameters_are_named(server):
    a = net()
    with pytest.raises(mur.InvalidArgumentError, match=r"betas\[1\]: 1\.5"):
        mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid", server=server, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="momentum"):
        mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid", server=server, momentum=0.9)
    with pytest.raises(ValueError, match="rule='hybird'"):
        mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybird", server=server)
    with pytest.raises(TypeError, match="float32"):
        mur.RemoteOptimizer(
            [torch.zeros(3, dtype=torch.int32)], optimizer="adam", server=server
        )  # float64: tests/test_precision.py


@needs_server
def test_a_repeated_step_number_is_not_applied_twice(server):
    """The protocol under the client's retries: the same request under an
    applied step number is answered (replayed) and applied once."""
    a = net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1, transport="grpc")
    pb = mur.optimizer.pb
    p = next(a.parameters())
    req = pb.StepRequest(
        session_id=opt.session_id,
        step=1,
        grads=[
            pb.Gradient(
                param_id="p0.0",
                grad=pb.Tensor(shape=list(p.shape), dtype=pb.DTYPE_FLOAT32, data=torch.ones_like(p).numpy().tobytes()),
            )
        ],
    )
    first = opt._conn.stub.Step(req, metadata=opt._conn.metadata())
    again = opt._conn.stub.Step(req, metadata=opt._conn.metadata())
    assert (first.replayed, again.replayed) == (False, True)
    assert first.params[0].value.data == again.params[0].value.data
    want = (p.detach() - 0.1).numpy().tobytes()
    assert again.params[0].value.data == want, "applied once: theta - lr * 1"
    opt.close()


@needs_server
def test_server_errors_surface_with_the_servers_message(server):
    a = net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="sgd", rule="additive", server=server, lr=0.1)
    sid = opt.session_id
    opt._conn.stub.CloseSession(mur.optimizer.pb.CloseSessionRequest(session_id=sid), metadata=opt._conn.metadata())
    with pytest.raises(mur.NotFoundError, match=sid):
        train(a, opt, 1)
    opt._session.id = None  # closed on the server already
    opt.close()


@needs_server
def test_auto_server_starts_and_stops():
    a = net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid")
    proc = opt._local.proc
    train(a, opt, 2)
    opt.close()
    assert proc.poll() is not None, "the auto-started server stopped with close()"


class _LostReply(grpc.RpcError):
    """What grpc raises when the connection drops after the server got the call."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset (simulated)"


@needs_server
def test_a_lost_connection_is_retried_with_the_same_step_number(server):
    a, b = net(), net()
    opt = mur.RemoteOptimizer(a.parameters(), optimizer="adam", rule="hybrid", server=server, gamma=0.5)
    ref = reference.Optimizer(b.parameters(), optimizer="adam", rule="hybrid", gamma=0.5)
    real_step, seen = opt._conn.stub.Step, []

    def flaky(req, **kw):
        seen.append(req.step)
        reply = real_step(req, **kw)  # the server applies the step...
        if len(seen) == 1:
            raise _LostReply()  # ...but the reply is lost on the way back
        return reply

    opt._conn.stub.Step = flaky
    train(a, opt, 1)
    train(b, ref, 1)
    assert seen == [1, 1], "the retry carries the same step number"
    assert max_diff(a, b) < 1e-6, "the step was applied exactly once"
    opt._conn.stub.Step = real_step
    opt.close()
