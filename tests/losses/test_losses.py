import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deepsem.config import ClassifierConfig, ModelConfig, RecommenderConfig, TowerConfig, TrainConfig
from deepsem.losses import (
    ClassificationLoss,
    MatchingLoss,
    NextItemLoss,
    cosent_loss,
    hinge_loss,
    negative_scores,
    pointwise_loss,
    softmax_loss,
)
from deepsem.models import TwoTowerModel
from deepsem.models.classifier import TextClassifier
from deepsem.models.recommender import TwoTowerRecommender


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


def _cosent_by_hand(score: list[float], labels: list[float], scale: float) -> float:
    """CoSENT written out from its formula, pair by pair."""
    terms = [math.exp(scale * (score[j] - score[i]))
             for i in range(len(score)) for j in range(len(score)) if labels[i] > labels[j]]
    return math.log(1.0 + sum(terms))


@pytest.mark.parametrize("labels", [[1.0, 0.0, 1.0, 0.0, 1.0], [5.0, 0.5, 3.2, 3.2, 1.0]])  # 0/1 and graded
def test_cosent_is_its_formula_and_its_gradient_is_right(labels):
    score = torch.tensor([0.9, 0.1, 0.5, 0.45, -0.3], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels, dtype=torch.float64)
    for scale in (20.0, 3.0):
        got = cosent_loss(score, y, scale).item()
        assert got == pytest.approx(_cosent_by_hand(score.tolist(), labels, scale), rel=1e-12)
    assert torch.autograd.gradcheck(lambda s: cosent_loss(s, y, 7.0), (score,))


def test_cosent_ranks_pairs_whatever_their_queries_and_ignores_ties():
    y = torch.tensor([1.0, 0.0, 1.0])
    # a positive scored below a negative costs; the same scores in the right order cost little
    wrong = cosent_loss(torch.tensor([0.2, 0.6, 0.9]), y).item()
    right = cosent_loss(torch.tensor([0.7, 0.6, 0.9]), y).item()
    assert wrong > 1.0 > 0.2 > right
    # labels all equal: no ordered pair, the loss is log(1) = 0
    flat = cosent_loss(torch.tensor([0.1, 0.9, 0.4], requires_grad=True), torch.ones(3))
    assert flat.item() == 0.0
    # bf16 cosines are summed in fp32
    assert cosent_loss(torch.tensor([0.2, 0.6, 0.9], dtype=torch.bfloat16), y).dtype == torch.float32


def test_matching_loss_with_cosent_adds_cosent_of_the_pairs_cosines():
    module, batch = _pair_case()
    del batch["s_ids"], batch["s_len"], batch["clash"]
    model = module.model
    model.eval()  # no dropout: the terms can be recomputed
    q = model.encode(batch["q_ids"], batch["q_len"], "query")
    d = model.encode(batch["d_ids"], batch["d_len"], "doc")
    cos = (q * d).sum(-1)
    alone = MatchingLoss(model, TrainConfig(loss="cosent"))(batch)
    torch.testing.assert_close(alone, cosent_loss(cos, batch["labels"], 20.0))
    scaled = MatchingLoss(model, TrainConfig(loss="cosent", cosent_scale=5.0))(batch)
    torch.testing.assert_close(scaled, cosent_loss(cos, batch["labels"], 5.0))
    both = MatchingLoss(model, TrainConfig(loss="cosent+softmax"))(batch)
    softmax = MatchingLoss(model, TrainConfig(loss="softmax"))(batch)
    torch.testing.assert_close(both, alone + softmax)


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


# -- the objective modules: each owns its model and can be wrapped in DistributedDataParallel ----------------
TOWER = {"vocab_size": 30, "embedding_dim": 8, "hidden_size": 6, "output_dim": 8}


@pytest.fixture(scope="module")
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-process gloo group, as ``torchrun`` would set up (the in-process form DDP needs)."""
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("ddp") / "store"
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store}")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _ids(rng: np.random.Generator, rows: int, width: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = rng.integers(1, width + 1, size=rows)
    ids = rng.integers(1, high, size=(rows, width)) * (np.arange(width)[None, :] < lengths[:, None])
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64))


def _pair_case() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    model = TwoTowerModel(ModelConfig.from_dict({"tower": TOWER, "shared_towers": True}, "model"))
    config = TrainConfig(loss="pointwise+softmax", negatives="both", num_negatives=2)
    rng = np.random.default_rng(0)
    (q_ids, q_len), (d_ids, d_len), (s_ids, s_len) = _ids(rng, 4, 5, 30), _ids(rng, 4, 5, 30), _ids(rng, 6, 5, 30)
    positive = torch.tensor([0, 2, 3])
    batch = {"q_ids": q_ids, "q_len": q_len, "d_ids": d_ids, "d_len": d_len,
             "labels": torch.tensor([1.0, 0.0, 1.0, 1.0]), "positive": positive,
             "same": torch.zeros(3, 4, dtype=torch.bool), "same_q": torch.eye(3, dtype=torch.bool),
             "s_ids": s_ids, "s_len": s_len, "clash": torch.tensor([[False, True], [False, False], [False, False]])}
    return MatchingLoss(model, config), batch


def _classifier_case() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(2)
    model = TextClassifier(ClassifierConfig(tower=TowerConfig(**TOWER), num_labels=3, ngram_buckets=16,
                                            ngram_dim=4))
    ids, lengths = _ids(np.random.default_rng(1), 5, 6, 30)
    batch = {"ids": ids, "lengths": lengths, "targets": torch.tensor([0, 2, 1, 1, 0])}
    return ClassificationLoss(model, weights=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1), batch


def _recommender_case(negatives: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    model = TwoTowerRecommender(RecommenderConfig(n_items=12, embedding_dim=8, hidden_size=6, output_dim=8,
                                                  max_history=4, title_encoder="none"))
    inputs = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 8, 9, 0]])
    targets = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0], [8, 9, 10, 0]])
    batch = {"inputs": inputs, "targets": targets, "lengths": torch.tensor([4, 2, 3]), "keep": targets > 0}
    counts = np.arange(1, 13)
    return NextItemLoss(model, counts, negatives=negatives, num_negatives=4), batch


CASES: dict[str, Callable[[], tuple[nn.Module, dict[str, torch.Tensor]]]] = {
    "matching": _pair_case, "classification": _classifier_case,
    **{f"next-item-{n}": (lambda n=n: _recommender_case(n)) for n in ("full", "in-batch", "sampled")},
}


def _loss_and_grads(module: nn.Module, params: nn.Module, batch: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    torch.manual_seed(7)  # the same dropout masks (and sampled items) for both
    loss = module(batch)
    loss.backward()
    return float(loss.detach()), {n: None if p.grad is None else p.grad.clone() for n, p in params.named_parameters()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ddp_wraps_each_loss_with_the_same_loss_and_gradients(process_group: None, case: str):
    plain, batch = CASES[case]()
    wrapped_loss = copy.deepcopy(plain)
    wrapped = DistributedDataParallel(wrapped_loss, find_unused_parameters=True)
    want, want_grads = _loss_and_grads(plain, plain, batch)
    got, got_grads = _loss_and_grads(wrapped, wrapped_loss, batch)
    assert math.isfinite(want) and got == pytest.approx(want, rel=1e-6)
    assert set(got_grads) == set(want_grads) and any(g is not None for g in want_grads.values())
    for name, grad in want_grads.items():
        assert (grad is None) == (got_grads[name] is None), name
        if grad is not None:
            assert torch.allclose(grad, got_grads[name], atol=1e-6), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_loss_owns_its_model_and_nothing_else(case: str):
    """What the trainer optimises (``loss.parameters()``) and checkpoints (``loss.model``) are the model's
    parameters, in the model's order: a checkpoint of the loss's model is the model's own state dict."""
    loss, _ = CASES[case]()
    assert [id(p) for p in loss.parameters()] == [id(p) for p in loss.model.parameters()]
    assert set(loss.model.state_dict()) == {k.removeprefix("model.") for k in loss.state_dict()}


def test_classification_loss_is_the_weighted_smoothed_cross_entropy_of_the_logits():
    loss, batch = _classifier_case()
    loss.eval()
    logits = loss.model(batch["ids"], batch["lengths"])
    want = F.cross_entropy(logits, batch["targets"], weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    assert float(loss(batch).detach()) == pytest.approx(float(want.detach()), rel=1e-6)


def test_next_item_full_softmax_is_minus_log_p_of_the_next_item():
    loss, batch = _recommender_case("full")
    loss.eval()
    net = loss.model
    users = net.user_steps(batch["inputs"], batch["lengths"])[batch["keep"]]
    logits = (users @ net.item_vectors().T) * net.gamma
    target = batch["targets"][batch["keep"]] - 1
    want = -torch.log_softmax(logits, dim=1)[torch.arange(len(target)), target].mean()
    assert float(loss(batch).detach()) == pytest.approx(float(want.detach()), rel=1e-5)


