"""Gradient clipping by norm and by value, on an exploding recurrent gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepsem.config import ConfigError, TrainConfig
from deepsem.trainer import clip_gradients


def exploding_rnn_gradients(seed: int = 0) -> nn.RNN:
    """A vanilla RNN whose recurrent matrix is 3 x an orthogonal one: the gradient grows ~3^T through time."""
    torch.manual_seed(seed)
    rnn = nn.RNN(4, 16, nonlinearity="relu", batch_first=True)
    with torch.no_grad():
        nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_hh_l0.mul_(3.0)
        rnn.bias_hh_l0.zero_()
        rnn.bias_ih_l0.fill_(0.1)
    out, _ = rnn(torch.rand(2, 30, 4))
    out[:, -1].sum().backward()
    return rnn


def global_norm(module: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters()])))


def test_exploding_gradient_is_clipped_to_the_norm_bound_keeping_its_direction() -> None:
    rnn = exploding_rnn_gradients()
    before = torch.cat([p.grad.flatten() for p in rnn.parameters()]).clone()
    assert before.norm() > 1e6  # it really explodes
    returned = clip_gradients(rnn.parameters(), clip_norm=1.0)
    after = torch.cat([p.grad.flatten() for p in rnn.parameters()])
    assert returned == pytest.approx(float(before.norm()), rel=1e-5)
    assert global_norm(rnn) == pytest.approx(1.0, rel=1e-4)
    assert torch.nn.functional.cosine_similarity(before, after, dim=0) > 0.99999  # direction kept


def test_clipping_by_value_bounds_every_element() -> None:
    rnn = exploding_rnn_gradients()
    before = torch.cat([p.grad.flatten() for p in rnn.parameters()]).clone()
    clip_gradients(rnn.parameters(), clip_value=0.01)
    after = torch.cat([p.grad.flatten() for p in rnn.parameters()])
    assert after.abs().max() == pytest.approx(0.01)
    torch.testing.assert_close(after, before.clamp(-0.01, 0.01))  # exactly the clamp, direction changes
    assert torch.nn.functional.cosine_similarity(before, after, dim=0) < 0.999


def test_value_then_norm_and_no_op_below_bounds() -> None:
    rnn = exploding_rnn_gradients()
    clip_gradients(rnn.parameters(), clip_norm=0.05, clip_value=0.01)
    assert global_norm(rnn) <= 0.05 + 1e-6
    assert max(float(p.grad.abs().max()) for p in rnn.parameters()) <= 0.01 + 1e-9
    small = nn.Linear(3, 1)
    small(torch.ones(1, 3)).sum().backward()
    before = [p.grad.clone() for p in small.parameters()]
    clip_gradients(small.parameters(), clip_norm=100.0, clip_value=100.0)
    for b, p in zip(before, small.parameters(), strict=True):
        torch.testing.assert_close(p.grad, b, atol=0, rtol=0)


def test_clip_value_is_validated() -> None:
    assert TrainConfig.from_dict({"clip_value": 0.5}).clip_value == 0.5
    with pytest.raises(ConfigError, match="clip_value"):
        TrainConfig.from_dict({"clip_value": -1.0})
