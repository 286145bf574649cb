import math

import pytest
import torch
import torch.nn.functional as F

from deepsem.losses import hinge_loss, negative_scores, pointwise_loss, softmax_loss


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_softmax_loss_matches_the_dssm_formula():
    q = unit([1.0, 0.0], [0.0, 1.0])
    d = unit([1.0, 1.0], [0.0, 1.0])
    pos, neg = negative_scores(q, d, torch.tensor([0, 1]))
    # cosines: q0.d0 = 1/sqrt2, q0.d1 = 0; q1.d0 = 1/sqrt2, q1.d1 = 1
    r = 1 / math.sqrt(2)
    assert torch.allclose(pos, torch.tensor([r, 1.0], dtype=torch.float64))
    inf = float("-inf")  # each query's own positive is masked out of its negatives
    assert torch.equal(neg, torch.tensor([[inf, 0.0], [neg[1, 0].item(), inf]], dtype=torch.float64))
    assert neg[1, 0].item() == pytest.approx(r)
    gamma = 5.0
    expected = (-math.log(math.exp(gamma * r) / (math.exp(gamma * r) + math.exp(0)))
                - math.log(math.exp(gamma) / (math.exp(gamma) + math.exp(gamma * r)))) / 2
    assert softmax_loss(pos, neg, gamma).item() == pytest.approx(expected, rel=1e-12)


def test_same_text_is_not_a_negative_and_sampled_negatives_append():
    q = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    d = unit([1.0, 0.0], [0.0, 1.0], [1.0, 0.0])
    same = torch.tensor([[False, False, True], [False, False, False], [True, False, False]])
    sampled = unit([[0.0, 1.0]], [[1.0, 0.0]], [[1.0, 1.0]]).view(3, 1, 2)
    pos, neg = negative_scores(q, d, torch.tensor([0, 1, 2]), same_doc=same, sampled=sampled)
    assert neg.shape == (3, 4)  # 3 in-batch columns + 1 sampled
    assert torch.isinf(neg[0, 2]) and torch.isinf(neg[0, 0]) and torch.isinf(neg[2, 0])
    assert neg[1, 2].item() == pytest.approx(0.0)
    assert neg[2, 3].item() == pytest.approx(1.0)  # q2 . sampled2 (same direction)
    loss = softmax_loss(pos, neg, 10.0)
    assert torch.isfinite(loss)


def test_random_only_negatives():
    q = unit([1.0, 0.0])
    d = unit([1.0, 0.0])
    sampled = unit([0.0, 1.0]).view(1, 1, 2)
    _, neg = negative_scores(q, d, torch.tensor([0]), sampled=sampled, in_batch=False)
    assert neg.shape == (1, 1)
    with pytest.raises(ValueError, match="no negatives"):
        negative_scores(q, d, torch.tensor([0]), in_batch=False)


def test_pointwise_is_bce_on_scaled_cosine():
    score = torch.tensor([0.9, -0.2, 0.1])
    labels = torch.tensor([1.0, 0.0, 1.0])
    got = pointwise_loss(score, labels, 4.0, -1.0).item()
    p = [1 / (1 + math.exp(-(4 * s - 1))) for s in score.tolist()]
    want = -sum(y * math.log(pi) + (1 - y) * math.log(1 - pi) for pi, y in zip(p, labels.tolist(), strict=True)) / 3
    assert got == pytest.approx(want, rel=1e-6)


def test_hinge_ignores_masked_negatives():
    pos = torch.tensor([0.8, 0.1])
    neg = torch.tensor([[0.7, float("-inf")], [0.5, 0.0]])
    # terms: max(0, .3-.8+.7)=.2, max(0,.3-.1+.5)=.7, max(0,.3-.1+0)=.2 ; mean over 3 finite
    assert hinge_loss(pos, neg, 0.3).item() == pytest.approx((0.2 + 0.7 + 0.2) / 3, rel=1e-6)


def test_masked_negatives_leave_a_learned_gamma_finite():
    gamma = torch.tensor(10.0, requires_grad=True)
    pos = torch.tensor([0.5, 0.2], requires_grad=True)
    neg = torch.tensor([[float("-inf"), 0.1], [0.3, float("-inf")]])
    softmax_loss(pos, neg, gamma).backward()
    assert torch.isfinite(gamma.grad) and torch.isfinite(pos.grad).all()
