"""The hybrid rule's defaults (gamma 0.9, lr_out = 10 x lr; docs/update-rules.md
section 6) are the same on the server, on every engine it runs, and in
mur.reference."""

import pytest
import torch

import mur
from mur import reference


def _net():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _train(opt, net, steps=6):
    torch.manual_seed(2)
    for _ in range(steps):
        x, y = torch.randn(8, 5), torch.randn(8, 2)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize("backend", ["native_server", "wasm_server"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_server_and_reference_share_the_hybrid_defaults(request, backend, optimizer):
    address = request.getfixturevalue(backend)
    a, b, plain = _net(), _net(), _net()
    lr = {"adam": 1e-2, "sgd": 0.05}[optimizer]
    opt = mur.RemoteOptimizer(a.parameters(), optimizer=optimizer, rule="hybrid", server=address, lr=lr)
    try:
        group = opt.param_groups[0]
        assert group["gamma"] == 0.9 and group["lr_in"] == 1.0
        assert group["lr_out"] is None  # the server's: 10 x lr, and it follows lr
        _train(opt, a)
    finally:
        opt.close()
    _train(reference.Optimizer(b.parameters(), optimizer=optimizer, rule="hybrid", lr=lr), b)
    # The release's values (gamma 1, lr_out = lr) give another trajectory: the defaults are not those.
    _train(
        reference.Optimizer(plain.parameters(), optimizer=optimizer, rule="hybrid", lr=lr, gamma=1.0, lr_out=lr), plain
    )
    for pa, pb, pc in zip(a.parameters(), b.parameters(), plain.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=1e-5), (pa - pb).abs().max()
        assert not torch.allclose(pb, pc, atol=1e-4)
