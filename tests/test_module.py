"""SupervisedModule's criteria are the losses the LipschitzLR bounds are derived for."""

import torch

from lipschitz_lightning.modules import CRITERIA


def test_mse_is_the_papers_half_least_squares():
    # E = 1/(2m) sum (a - y)^2 (paper eq. 7) has gradient (a - y)/m: the least-squares bound's loss.
    a = torch.tensor([[1.0], [3.0], [-2.0], [0.5]], requires_grad=True)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.5]])
    loss = CRITERIA["mse"]()(a, y)
    assert torch.isclose(loss, ((a - y) ** 2).sum() / (2 * 4))
    loss.backward()
    assert torch.allclose(a.grad, (a - y).detach() / 4)
