"""The distillation terms against hand computations, and the loss module: the pair loss plus the terms computed from
the very vectors the pair loss used, gradients reaching the student only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from deepsem.config import CrossEncoderConfig, ModelConfig, TowerConfig, TrainConfig
from deepsem.losses import DistillLoss, MatchingLoss, kl_distill_loss, margin_mse_loss, vector_mse_loss
from deepsem.losses.distill import encode_by_length, relation_loss
from deepsem.models import TwoTowerModel
from deepsem.models.cross_encoder import CrossEncoderModel


def lists(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.rand(3, 4, generator=g) * 2 - 1
    teacher = torch.randn(3, 4, generator=g) * 3
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 3] = False
    valid[2, 2:] = False
    return student, teacher, valid


def test_kl_term_equals_a_hand_computation() -> None:
    student, teacher, valid = lists()
    gamma, temperature = 7.0, 2.0
    expected = []
    for s_row, t_row, v_row in zip(student.tolist(), teacher.tolist(), valid.tolist(), strict=True):
        s = [gamma * x for x, v in zip(s_row, v_row, strict=True) if v]
        t = [x / temperature for x, v in zip(t_row, v_row, strict=True) if v]
        zt, zs = sum(math.exp(x) for x in t), sum(math.exp(x) for x in s)
        pt = [math.exp(x) / zt for x in t]
        ps = [math.exp(x) / zs for x in s]
        expected.append(sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)))
    got = kl_distill_loss(student, teacher, gamma, temperature, valid)
    assert float(got) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # the student that scores as the teacher does (gamma * s = t / T) has nothing left to learn
    assert float(kl_distill_loss(teacher / (temperature * gamma), teacher, gamma, temperature, valid)) == \
        pytest.approx(0.0, abs=1e-6)


def test_margin_mse_term_equals_a_hand_computation() -> None:
    student, teacher, valid = lists(1)
    gamma, temperature = 5.0, 0.5
    terms = []
    for s, t, v in zip(student.tolist(), teacher.tolist(), valid.tolist(), strict=True):
        for j in range(1, len(s)):
            if v[j]:
                terms.append(((gamma * s[0] - gamma * s[j]) - (t[0] - t[j]) / temperature) ** 2)
    got = margin_mse_loss(student, teacher, gamma, temperature, valid)
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_vector_term_is_the_mean_squared_distance() -> None:
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    expected = np.mean([np.sum((x - y) ** 2) for x, y in zip(a.numpy(), b.numpy(), strict=True)])
    assert float(vector_mse_loss(a, b)) == pytest.approx(float(expected), rel=1e-5)


def tiny_model(seed: int = 0, dim: int = 8) -> TwoTowerModel:
    torch.manual_seed(seed)
    return TwoTowerModel(ModelConfig(tower=TowerConfig(vocab_size=30, embedding_dim=8, hidden_size=8, output_dim=dim,
                                                       dropout=0.0, embedding_dropout=0.0)))


def batch_of(k: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, p = 4, 3  # pairs 0, 1, 3 positive

    def texts(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(2, 6, (n,), generator=g)
        ids = torch.randint(1, 30, (n, int(lengths.max())), generator=g)
        ids = ids * (torch.arange(ids.shape[1])[None, :] < lengths[:, None])
        return ids, lengths

    q_ids, q_len = texts(b)
    d_ids, d_len = texts(b)
    c_ids, c_len = texts(p * k)
    positive = torch.tensor([0, 1, 3])
    return {"q_ids": q_ids, "q_len": q_len, "d_ids": d_ids, "d_len": d_len,
            "labels": torch.tensor([1.0, 1.0, 0.0, 1.0]), "positive": positive,
            "same": torch.zeros(p, b, dtype=torch.bool), "same_q": torch.zeros(p, p, dtype=torch.bool),
            "c_ids": c_ids, "c_len": c_len, "c_teacher": torch.randn(p, 1 + k, generator=g),
            "c_valid": torch.ones(p, 1 + k, dtype=torch.bool)}


@pytest.mark.parametrize("score_loss", ["kl", "margin-mse"])
def test_the_loss_is_the_pair_loss_plus_the_weighted_term_of_the_same_vectors(score_loss: str) -> None:
    net, cfg = tiny_model(), TrainConfig()
    batch = batch_of()
    loss = DistillLoss(net, cfg, score_loss=score_loss, score_weight=0.7, temperature=2.0)
    total = loss(batch)
    # an independent reference: the pair loss alone, and the cosines encoded here
    pair = MatchingLoss(net, cfg)(batch)
    q = net.encode(batch["q_ids"], batch["q_len"], "query")[batch["positive"]]
    d = net.encode(batch["d_ids"], batch["d_len"], "doc")[batch["positive"]]
    c = net.encode(batch["c_ids"], batch["c_len"], "doc").view(3, 3, -1)
    cos = torch.cat([(q * d).sum(-1, keepdim=True), (q[:, None, :] * c).sum(-1)], dim=1)
    kernel = kl_distill_loss if score_loss == "kl" else margin_mse_loss
    term = kernel(cos, batch["c_teacher"], net.gamma, 2.0, batch["c_valid"])
    assert total.item() == pytest.approx((pair + 0.7 * term).item(), rel=1e-5)
    assert term.item() > 0


def test_gradients_reach_the_student_and_never_the_teacher() -> None:
    net = tiny_model()
    batch = batch_of()
    torch.manual_seed(1)
    teacher = CrossEncoderModel(CrossEncoderConfig(vocab_size=30, hidden_size=8, embedding_dim=8))
    p = batch["positive"]
    k = batch["c_teacher"].shape[1] - 1
    # the teacher's logits of the same lists, left attached to its graph: the loss must not train through them
    width = max(batch["d_ids"].shape[1], batch["c_ids"].shape[1])
    pos = F.pad(batch["d_ids"][p], (0, width - batch["d_ids"].shape[1]))[:, None, :]
    negatives = F.pad(batch["c_ids"], (0, width - batch["c_ids"].shape[1])).view(len(p), k, width)
    docs = torch.cat([pos, negatives], 1).view(-1, width)
    doc_len = torch.cat([batch["d_len"][p, None], batch["c_len"].view(len(p), k)], 1).view(-1)
    queries = batch["q_ids"][p].repeat_interleave(1 + k, 0)
    batch["c_teacher"] = teacher(queries, batch["q_len"][p].repeat_interleave(1 + k, 0), docs, doc_len
                                 ).view(len(p), 1 + k)
    assert batch["c_teacher"].requires_grad
    loss = DistillLoss(net, TrainConfig(), score_weight=1.0, vector_weight=1.0, teacher_dim=5)
    batch.update({"t_q": torch.randn(4, 5, requires_grad=True), "t_q_mask": torch.tensor([True, False, True, True]),
                  "t_d": torch.randn(4, 5, requires_grad=True), "t_d_mask": torch.ones(4, dtype=torch.bool)})
    loss(batch).backward()
    assert all(param.grad is None for param in teacher.parameters())
    assert batch["t_q"].grad is None and batch["t_d"].grad is None
    student = dict(loss.model.named_parameters())
    assert "projection.weight" in student  # the 8-wide student maps onto the 5-wide teacher
    assert all(param.grad is not None for name, param in student.items() if param.requires_grad), \
        [name for name, param in student.items() if param.requires_grad and param.grad is None]
    # what the optimiser sees is the student's: the pair loss's model is the same module
    assert {id(x) for x in loss.parameters()} == {id(x) for x in loss.model.parameters()}


def test_the_vector_term_reads_only_rows_with_a_teacher_vector() -> None:
    net = tiny_model(dim=5)
    batch = batch_of()
    del batch["c_teacher"], batch["c_valid"], batch["c_ids"], batch["c_len"]
    t_q, t_d = torch.randn(4, 5), torch.randn(4, 5)
    mask_q, mask_d = torch.tensor([True, False, False, True]), torch.tensor([False, True, False, False])
    batch.update({"t_q": t_q, "t_q_mask": mask_q, "t_d": t_d, "t_d_mask": mask_d})
    loss = DistillLoss(net, TrainConfig(), vector_weight=2.0, teacher_dim=5)
    assert loss.model.projection is None  # the same width: no map
    total = loss(batch)
    q = net.encode(batch["q_ids"], batch["q_len"], "query")
    d = net.encode(batch["d_ids"], batch["d_len"], "doc")
    rows = torch.cat([q[mask_q] - t_q[mask_q], d[mask_d] - t_d[mask_d]])
    expected = MatchingLoss(net, TrainConfig())(batch) + 2.0 * rows.pow(2).sum(-1).mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_encoding_by_length_groups_gives_the_vectors_of_encoding_at_once() -> None:
    net = tiny_model().eval()
    batch = batch_of(k=5)
    ids, lengths = batch["c_ids"], batch["c_len"]
    grouped = encode_by_length(net, ids, lengths, "doc", rows=4)
    torch.testing.assert_close(grouped, net.encode(ids, lengths, "doc"), atol=1e-5, rtol=1e-5)


def test_the_relation_term_is_torch_kl_div_of_each_querys_row() -> None:
    g = torch.Generator().manual_seed(4)
    q, d = F.normalize(torch.randn(3, 6, generator=g), dim=-1), F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    t_q, t_d = torch.randn(3, 4, generator=g) * 3, torch.randn(5, 4, generator=g)  # not unit: normalised inside
    gamma, temperature = 9.0, 0.1
    teacher = (F.normalize(t_q, dim=-1) @ F.normalize(t_d, dim=-1).T / temperature).softmax(-1)
    expected = F.kl_div((gamma * q @ d.T).log_softmax(-1), teacher, reduction="batchmean")
    assert float(relation_loss(q, d, t_q, t_d, gamma, temperature)) == pytest.approx(float(expected), rel=1e-5)
    # a student whose cosines are the teacher's (gamma = 1 / T) has nothing left to learn
    same = F.normalize(t_q, dim=-1), F.normalize(t_d, dim=-1)
    assert float(relation_loss(*same, t_q, t_d, 1 / temperature, temperature)) == pytest.approx(0.0, abs=1e-6)
    # no distribution to learn: no query, or a single document
    assert float(relation_loss(q[:0], d, t_q[:0], t_d, gamma, temperature)) == 0.0
    assert float(relation_loss(q, d[:1], t_q, t_d[:1], gamma, temperature)) == 0.0


def test_the_relation_term_reads_the_batchs_own_vectors_where_the_teacher_has_one() -> None:
    net = tiny_model(dim=5)
    batch = batch_of()
    del batch["c_teacher"], batch["c_valid"], batch["c_ids"], batch["c_len"]
    t_q, t_d = torch.randn(4, 7), torch.randn(4, 7)  # another width: relations need no map
    mask_q, mask_d = torch.tensor([True, False, True, True]), torch.tensor([True, True, False, True])
    batch.update({"t_q": t_q, "t_q_mask": mask_q, "t_d": t_d, "t_d_mask": mask_d})
    loss = DistillLoss(net, TrainConfig(), vector_weight=0.0, relation_weight=0.5, relation_temperature=0.2,
                       teacher_dim=7)
    total = loss(batch)
    q = net.encode(batch["q_ids"], batch["q_len"], "query")[mask_q]
    d = net.encode(batch["d_ids"], batch["d_len"], "doc")[mask_d]
    teacher = (F.normalize(t_q[mask_q], dim=-1) @ F.normalize(t_d[mask_d], dim=-1).T / 0.2).softmax(-1)
    term = F.kl_div((net.gamma * q @ d.T).log_softmax(-1), teacher, reduction="batchmean")
    assert term.item() > 0
    expected = MatchingLoss(net, TrainConfig())(batch) + 0.5 * term
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="relation_temperature"):
        DistillLoss(net, TrainConfig(), relation_weight=1.0, relation_temperature=0.0, teacher_dim=7)


def test_the_pair_term_is_torch_distributions_kl_of_each_pairs_two_bernoullis() -> None:
    from torch.distributions import Bernoulli, kl_divergence

    net = tiny_model(dim=5)
    with torch.no_grad():  # not the initial scale and offset: the term must read the model's own
        net.log_gamma.fill_(math.log(6.0))
        net.bias.fill_(-0.7)
    batch = batch_of()
    del batch["c_teacher"], batch["c_valid"], batch["c_ids"], batch["c_len"]
    batch["p_teacher"] = torch.tensor([2.5, -1.0, 0.3, 4.0])  # every pair's, the label-0 pair's too
    q = net.encode(batch["q_ids"], batch["q_len"], "query")
    d = net.encode(batch["d_ids"], batch["d_len"], "doc")
    student = net.gamma * (q * d).sum(-1) + net.bias  # the pointwise loss's logit of each pair
    pair = MatchingLoss(net, TrainConfig())(batch)
    for t in (1.0, 2.0):
        total = DistillLoss(net, TrainConfig(), pair_weight=0.4, temperature=t)(batch)
        kl = kl_divergence(Bernoulli(logits=batch["p_teacher"] / t), Bernoulli(logits=student / t)).mean()
        assert kl.item() > 0
        assert total.item() == pytest.approx((pair + 0.4 * t * t * kl).item(), rel=1e-5)
    # weight 0, or no teacher logits in the batch: the pair loss alone
    assert DistillLoss(net, TrainConfig(), pair_weight=0.0)(batch).item() == pytest.approx(pair.item(), rel=1e-6)
    del batch["p_teacher"]
    assert DistillLoss(net, TrainConfig(), pair_weight=1.0)(batch).item() == pytest.approx(pair.item(), rel=1e-6)


def test_the_pair_term_trains_the_scale_and_offset_the_pointwise_loss_uses() -> None:
    net = tiny_model(dim=5)
    batch = batch_of()
    del batch["c_teacher"], batch["c_valid"], batch["c_ids"], batch["c_len"]
    batch["p_teacher"] = torch.tensor([2.5, -1.0, 0.3, 4.0])
    loss = DistillLoss(net, TrainConfig(loss="softmax"), pair_weight=1.0)  # no pointwise term of its own
    loss(batch).backward()
    assert net.bias.grad is not None and float(net.bias.grad.abs()) > 0
    assert net.log_gamma.grad is not None and float(net.log_gamma.grad.abs()) > 0
