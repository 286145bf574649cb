"""The rerank task: a tiny training run learns a task only a model reading both texts can, the model directory
round trip, deepsem.load, score / rank, evaluation and the listwise objective."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pairs
from torch.nn import functional as F

import deepsem
from deepsem.data.pairs import TextPairs
from deepsem.metrics import mrr_at_k
from deepsem.tasks.rerank import (
    CrossEncoder,
    candidate_lists,
    evaluate_rerank,
    length_chunks,
    ranking_metrics,
    train_rerank,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "model_dirs_v1"
GROUPS = ["甲乙丙丁戊己庚辛", "子丑寅卯辰巳午未"]
TINY = {"hidden_size": 16, "embedding_dim": 16}


def xor_pairs(n: int, seed: int) -> TextPairs:
    """Relevant when query and document come from the same group of characters: neither text alone says anything
    of the label (each group is half the queries and half the documents), so a model must read both together."""
    rng = random.Random(seed)

    def text(group: int, lo: int, hi: int) -> str:
        return "".join(rng.choice(GROUPS[group]) for _ in range(rng.randint(lo, hi)))

    a, b, y = [], [], []
    for _ in range(n):
        gq, gd = rng.randrange(2), rng.randrange(2)
        a.append(text(gq, 2, 4))
        b.append(text(gd, 3, 8))
        y.append(float(gq == gd))
    return TextPairs(a, b, np.asarray(y, np.float32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[CrossEncoder, Path]:
    out = tmp_path_factory.mktemp("rerank") / "model"
    model, _ = train_rerank(xor_pairs(240, 1), out, xor_pairs(80, 2), model=TINY,
                            training={"epochs": 3, "batch_size": 16, "lr": 1e-2}, progress=False)
    return model, out


def test_training_learns_a_task_that_needs_both_texts(trained: tuple[CrossEncoder, Path]) -> None:
    model, _ = trained
    held_out = xor_pairs(200, 3)
    metrics = evaluate_rerank(model, held_out)
    assert metrics["accuracy"] >= 0.9  # chance is 0.5
    assert metrics["roc_auc"] >= 0.95
    assert model.threshold == pytest.approx(model.info["dev_metrics"]["threshold"])  # chosen on dev, saved


def test_save_load_round_trip_gives_identical_scores(trained: tuple[CrossEncoder, Path], tmp_path: Path) -> None:
    model, out = trained
    pairs = list(zip(xor_pairs(40, 4).text_a, xor_pairs(40, 4).text_b, strict=True))
    loaded = deepsem.load(out)
    assert type(loaded) is CrossEncoder
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["task"] == "rerank"
    np.testing.assert_array_equal(loaded.score(pairs), model.score(pairs))
    again = CrossEncoder.load(loaded.save(tmp_path / "copy"))
    np.testing.assert_array_equal(again.score(pairs), model.score(pairs))
    assert again.threshold == model.threshold


@pytest.mark.parametrize("folder", ["two_tower", "classifier", "recommender"])
def test_older_model_directories_of_other_tasks_still_load(folder: str) -> None:
    assert not isinstance(deepsem.load(FIXTURES / folder), CrossEncoder)


def test_score_does_not_depend_on_batching_and_rank_orders_by_it(trained: tuple[CrossEncoder, Path]) -> None:
    model, _ = trained
    data = xor_pairs(20, 5)
    pairs = list(zip(data.text_a, data.text_b, strict=True))
    one_by_one = np.concatenate([model.score([p], batch_size=1) for p in pairs])
    np.testing.assert_allclose(model.score(pairs, batch_size=7), one_by_one, atol=1e-6)
    assert model.score([]).shape == (0,)
    query, docs = data.text_a[0], data.text_b
    ranked = model.rank(query, docs)
    expected = model.score([(query, d) for d in docs])
    assert sorted(i for i, _ in ranked) == list(range(len(docs)))
    assert [s for _, s in ranked] == sorted(expected.tolist(), reverse=True)
    np.testing.assert_allclose([s for _, s in ranked], expected[[i for i, _ in ranked]], atol=1e-6)
    assert model.rank(query, docs, top_k=3) == ranked[:3]


def test_ranking_metrics_agree_with_the_metrics_module() -> None:
    pairs = TextPairs(["q", "q", "q", "r", "r"], ["a", "b", "c", "d", "e"], np.asarray([0, 1, 0, 1, 0], np.float32))
    scores = np.asarray([0.9, 0.5, 0.1, 0.2, 0.8])
    out = ranking_metrics(pairs, scores)
    assert out["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    run = {"q": {"a": 0.9, "b": 0.5, "c": 0.1}, "r": {"d": 0.2, "e": 0.8}}
    assert out["mrr"] == pytest.approx(mrr_at_k(run, {"q": {"b": 1}, "r": {"d": 1}}, k=None))
    assert ranking_metrics(pairs, pairs.labels)["map"] == 1.0  # type: ignore[arg-type]


def test_candidate_lists_of_positive_pairs() -> None:
    pairs = TextPairs([f"q{i}" for i in range(20)], [f"d{i}" for i in range(20)])
    lists = candidate_lists(pairs, negatives=4, seed=1)
    assert lists.labels is not None and len(lists.text_a) == 20 * 5
    for i in range(20):
        rows = [j for j, a in enumerate(lists.text_a) if a == f"q{i}"]
        assert [lists.text_b[j] for j in rows if lists.labels[j] == 1] == [f"d{i}"]
        assert len({lists.text_b[j] for j in rows}) == 5


def test_positive_only_pairs_train_with_the_listwise_loss(tmp_path: Path) -> None:
    data = xor_pairs(200, 6)
    keep = data.labels == 1  # type: ignore[comparison-overlap]
    positives = TextPairs([a for a, k in zip(data.text_a, keep, strict=True) if k],
                          [b for b, k in zip(data.text_b, keep, strict=True) if k])
    model, result = train_rerank(positives, tmp_path / "m", positives, model=TINY,
                                 training={"epochs": 1, "batch_size": 16, "num_negatives": 3}, progress=False)
    assert model.info["objective"].startswith("listwise")
    assert set(model.info["dev_metrics"]) >= {"mrr", "map", "ndcg@10"}
    assert np.isfinite(result.best_metric if result.best_metric is not None else 0.0)


def test_listwise_loss_is_cross_entropy_over_the_valid_candidates() -> None:
    from deepsem.losses.rerank import RerankLoss

    class Fixed(torch.nn.Module):
        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return torch.tensor([2.0, 1.0, 5.0, 0.5, 0.0, 3.0])

    loss = RerankLoss(Fixed())  # type: ignore[arg-type]
    empty = torch.zeros(6, 1, dtype=torch.long)
    batch = {"q_ids": empty, "q_lengths": empty[:, 0], "d_ids": empty, "d_lengths": empty[:, 0]}
    valid = torch.tensor([[True, True, False], [True, True, True]])  # the 5.0 is the query's own document
    got = loss({**batch, "valid": valid})
    want = (-F.log_softmax(torch.tensor([2.0, 1.0]), 0)[0] - F.log_softmax(torch.tensor([0.5, 0.0, 3.0]), 0)[0]) / 2
    torch.testing.assert_close(got, want)
    bce = loss({**batch, "targets": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])})
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 1.0, 5.0, 0.5, 0.0, 3.0]), torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])))


def test_pretrained_vectors_start_the_embeddings_and_frozen_ones_stay(tmp_path: Path) -> None:
    chars = sorted(set("".join(GROUPS)))
    rng = np.random.default_rng(0)
    vectors = {c: rng.normal(size=16).astype(np.float32) for c in chars[:-1]}  # one character left without
    vec = tmp_path / "chars.vec"
    vec.write_text(f"{len(vectors)} 16\n" + "".join(f"{c} {' '.join(f'{x:.6f}' for x in v)}\n"
                                                     for c, v in vectors.items()), encoding="utf-8")
    model, _ = train_rerank(xor_pairs(64, 5), tmp_path / "m", model=TINY, pretrained=vec, freeze_embeddings=True,
                            training={"epochs": 1, "batch_size": 16}, progress=False)
    report = model.info["pretrained"]
    assert report["found"] == len(vectors) and report["frozen"] is True
    weight = model.model.embedding.weight.detach()
    ids = [model.tokenizer.encode(c)[0] for c in vectors]
    rows = weight[ids].numpy()
    want = np.stack(list(vectors.values()))
    scale = np.linalg.norm(rows, axis=1) / np.linalg.norm(want, axis=1)  # one common factor (scale="match")
    np.testing.assert_allclose(scale, scale[0], rtol=1e-4)
    np.testing.assert_allclose(rows, want * scale[0], rtol=1e-4, atol=1e-6)  # frozen: still the copied vectors
    # the vectors are part of the run: the same output directory with other vectors is another run
    with pytest.raises(deepsem.errors.ResumeMismatchError):
        train_rerank(xor_pairs(64, 5), tmp_path / "m", model=TINY, training={"epochs": 1, "batch_size": 16},
                     progress=False)


@pytest.mark.parametrize("seed", range(5))
def test_length_chunks_cover_every_row_once_and_bound_the_padding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    widths = rng.integers(1, 40, size=int(rng.integers(1, 120)))
    for most, slack in [(256, 1.5), (16, 1.5), (7, 1.1), (256, 1.0)]:
        chunks = length_chunks(widths, most, slack)
        rows = np.concatenate(chunks)
        assert sorted(rows.tolist()) == list(range(len(widths)))  # a partition of the rows
        for chunk in chunks:
            w = widths[chunk]
            assert 1 <= len(chunk) <= most
            assert (np.diff(w) >= 0).all()  # shortest first
            assert len(chunk) == 1 or len(chunk) * w.max() <= slack * w.sum() + 1e-9
        cut = [int(widths[c].max()) for c in chunks]
        assert cut == sorted(cut)
    same = length_chunks(np.full(600, 12), 256)  # equal widths: full chunks
    assert [len(c) for c in same] == [256, 256, 88]


def test_scores_do_not_depend_on_how_the_pairs_are_chunked(tiny_reranker) -> None:
    ce, _ = tiny_reranker
    pairs = [(a, b) for a, b, _ in make_pairs(50, 8)]
    np.testing.assert_allclose(ce.score(pairs, batch_size=3), ce.score(pairs, batch_size=256), atol=1e-6)


def test_distillation_adds_the_kl_of_each_candidate_lists_softmaxes() -> None:
    from deepsem.losses.rerank import RerankLoss

    logits = torch.tensor([2.0, 1.0, 5.0, 0.5, 0.0, 3.0])

    class Fixed(torch.nn.Module):
        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return logits

    empty = torch.zeros(6, 1, dtype=torch.long)
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    teacher = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6, 0.85])
    lists = torch.tensor([[0, 3, 5], [2, 1, 0]])  # rows 0, 3, 5 and rows 2, 1 (the third slot padding)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    batch = {"q_ids": empty, "q_lengths": empty[:, 0], "d_ids": empty, "d_lengths": empty[:, 0],
             "targets": targets, "teacher": teacher, "lists": lists, "lists_valid": valid}
    got = RerankLoss(Fixed(), distill_weight=0.5, temperature=0.1)(batch)  # type: ignore[arg-type]

    def kl(rows: list[int]) -> torch.Tensor:  # torch's own KL of the two distributions over one list
        target = torch.softmax(teacher[rows] / 0.1, 0)
        return F.kl_div(torch.log_softmax(logits[rows], 0), target, reduction="sum")

    want = F.binary_cross_entropy_with_logits(logits, targets) + 0.5 * (kl([0, 3, 5]) + kl([2, 1])) / 2
    torch.testing.assert_close(got, want)
    no_lists = {**batch, "lists": lists[:0], "lists_valid": valid[:0]}  # no list of two: the label loss alone
    torch.testing.assert_close(RerankLoss(Fixed(), 0.5, 0.1)(no_lists),  # type: ignore[arg-type]
                               F.binary_cross_entropy_with_logits(logits, targets))


def test_a_cross_encoder_teacher_adds_the_kl_of_each_pairs_two_bernoullis() -> None:
    from torch.distributions import Bernoulli, kl_divergence

    from deepsem.losses.rerank import RerankLoss, soft_target_loss

    logits = torch.tensor([2.0, -1.0, 5.0, 0.5, 0.0, -3.0], dtype=torch.float64, requires_grad=True)

    class Fixed(torch.nn.Module):
        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return logits

    empty = torch.zeros(6, 1, dtype=torch.long)
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    teacher = torch.tensor([1.5, 0.3, -2.0, 0.5, 4.0, -3.0], dtype=torch.float64)
    batch = {"q_ids": empty, "q_lengths": empty[:, 0], "d_ids": empty, "d_lengths": empty[:, 0],
             "targets": targets, "teacher_logits": teacher}
    for t in (1.0, 2.0, 0.5):
        got = RerankLoss(Fixed(), distill_weight=0.7, temperature=t)(batch)  # type: ignore[arg-type]
        # torch.distributions' own KL of the two Bernoullis, times T squared (Hinton's scaling)
        kl = kl_divergence(Bernoulli(logits=teacher / t), Bernoulli(logits=logits / t)).mean()
        want = F.binary_cross_entropy_with_logits(logits, targets) + 0.7 * t * t * kl
        torch.testing.assert_close(got, want.float())  # the loss computes in float32
    # zero, with a zero gradient, where the student already says what the teacher says
    agreed = teacher.clone().requires_grad_(True)
    term = soft_target_loss(agreed, teacher, 2.0)
    term.backward()
    assert abs(term.item()) < 1e-6 and float(agreed.grad.abs().max()) < 1e-6  # type: ignore[union-attr]
    # weight 0: the label loss alone
    torch.testing.assert_close(RerankLoss(Fixed(), 0.0)(batch),  # type: ignore[arg-type]
                               F.binary_cross_entropy_with_logits(logits, targets).float())


def test_a_batchs_rows_are_grouped_into_its_queries_lists() -> None:
    from deepsem.tasks.rerank import _teach

    class Scores:
        def scores(self, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
            return (queries * 10 + docs).astype(np.float32)

    queries = np.asarray([7, 3, 7, 9, 3, 7])  # query 9 has one document: nothing to order
    docs = np.asarray([1, 2, 3, 4, 5, 6])
    got = _teach(Scores(), queries, docs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got["teacher"].numpy(), queries * 10 + docs)
    lists = [sorted(row[ok].tolist()) for row, ok in zip(got["lists"].numpy(), got["lists_valid"].numpy(),
                                                         strict=True)]
    assert sorted(lists) == [[0, 2, 5], [1, 4]]
    listwise = _teach(Scores(), np.repeat([1, 2], 3), np.arange(6), np.asarray([[1, 1, 0], [1, 1, 1]], bool))
    np.testing.assert_array_equal(listwise["lists"].numpy(), [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(listwise["lists_valid"].numpy(), [[1, 1, 0], [1, 1, 1]])
