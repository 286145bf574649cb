"""Score fusion in two-stage search (``rerank_weight``): the fused order and scores checked against an independent
numpy computation over CrossEncoder.score of the candidate pairs and the first stage's own scores (search without
rerank), in dense, lexical and hybrid modes; w = 1 is today's re-ranking exactly, w = 0 the first stage's order;
bad weights are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs

from deepsem.errors import QueryError
from deepsem.index import Document, Index
from deepsem.index.vector_index import Hit, minmax
from deepsem.tasks.rerank import CrossEncoder

QUERIES = ["银行卡余额", "火车站车票", "医生看病"]
TOP = 12


@pytest.fixture(scope="module")
def reranker(tiny_reranker: tuple[CrossEncoder, Path]) -> CrossEncoder:
    return tiny_reranker[0]


@pytest.fixture(scope="module")
def index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    texts = list(dict.fromkeys(a for a, _, _ in make_pairs(60, 9)))[:40]
    docs = [Document(f"d{i}", t, {"group": i % 2}) for i, t in enumerate(texts)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("fusion") / "idx", lexical=True)


def scaled(x: np.ndarray) -> np.ndarray:
    """Min-max scaling written out here, independently of deepsem's minmax."""
    x = x.astype(np.float64)
    span = x.max() - x.min()
    return np.ones_like(x) if span == 0 else (x - x.min()) / span


def expected(index: Index, ce: CrossEncoder, query: str, k: int, w: float, mode: str) -> list[Hit]:
    """The first stage's best TOP (search without rerank), ranked by w * scaled(CrossEncoder.score) + (1 - w) *
    scaled(first-stage score), ties in the first stage's order; the score is that fused one (w = 1: the
    probability itself)."""
    stage1 = index.search(query, k=TOP, mode=mode)[0]
    probs = ce.score([(query, h.text) for h in stage1]).astype(np.float64)
    fused = w * scaled(probs) + (1 - w) * scaled(np.array([h.score for h in stage1]))
    score = probs if w == 1 else fused
    order = sorted(range(len(stage1)), key=lambda i: (-fused[i], i))[:k]
    return [Hit(stage1[i].id, stage1[i].text, float(score[i]), stage1[i].metadata, stage1[i].score, i + 1)
            for i in order]


def same(got: list[Hit], want: list[Hit]) -> None:
    assert [h.id for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    np.testing.assert_allclose([h.first_score for h in got], [h.first_score for h in want],  # type: ignore[arg-type]
                               rtol=1e-6, atol=1e-6)
    assert [h.first_rank for h in got] == [h.first_rank for h in want]
    assert [h.metadata for h in got] == [h.metadata for h in want]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize("w", [0.0, 0.3, 0.7, 1.0])
def test_fused_order_equals_an_independent_computation(index, reranker, mode, w):
    found = index.search(QUERIES, k=5, mode=mode, rerank=reranker, rerank_top=TOP, rerank_weight=w)
    assert len(found) == len(QUERIES)
    for query, hits in zip(QUERIES, found, strict=True):
        assert hits
        same(hits, expected(index, reranker, query, 5, w, mode))


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_weight_one_is_exactly_the_call_without_it(index, reranker, mode):
    plain = index.search(QUERIES, k=5, mode=mode, rerank=reranker, rerank_top=TOP)
    for w in (1.0, 1):
        one = index.search(QUERIES, k=5, mode=mode, rerank=reranker, rerank_top=TOP, rerank_weight=w)
        assert [[h.to_dict() for h in hits] for hits in one] == [[h.to_dict() for h in hits] for hits in plain]
    none = index.search(QUERIES, k=5, mode=mode, rerank=reranker, rerank_top=TOP, rerank_weight=None)
    assert [[h.to_dict() for h in hits] for hits in none] == [[h.to_dict() for h in hits] for hits in plain]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_weight_zero_is_the_first_stages_own_order(index, reranker, mode):
    for query in QUERIES:
        first = index.search(query, k=5, mode=mode)[0]
        fused = index.search(query, k=5, mode=mode, rerank=reranker, rerank_top=TOP, rerank_weight=0.0)[0]
        assert [h.id for h in fused] == [h.id for h in first]
        assert [h.first_rank for h in fused] == list(range(1, len(first) + 1))
        np.testing.assert_allclose([h.first_score for h in fused], [h.score for h in first], rtol=1e-6)
        assert fused[0].score == 1.0  # the best first-stage score maps to 1


def test_fusion_changes_the_order_between_the_two_extremes(index, reranker):
    """Over the queries and modes, some weight in between gives a list that is neither extreme's (the fixture's
    re-ranker disagrees with the first stage), so the weight really mixes the two."""
    mixed = False
    for mode in ("dense", "lexical", "hybrid"):
        ids = {w: [[h.id for h in hits] for hits in index.search(QUERIES, k=5, mode=mode, rerank=reranker,
                                                                 rerank_top=TOP, rerank_weight=w)]
               for w in (0.0, 0.3, 0.5, 0.7, 1.0)}
        mixed |= any(ids[w][q] not in (ids[0.0][q], ids[1.0][q]) for w in (0.3, 0.5, 0.7) for q in range(len(QUERIES)))
    assert mixed


def test_minmax():
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert minmax(np.array([7.0, 7.0])).tolist() == [1.0, 1.0]
    assert minmax(np.array([-3.5])).tolist() == [1.0]
    assert minmax(np.array([])).size == 0


def test_bad_rerank_weights_are_refused(index, reranker):
    with pytest.raises(ValueError, match="give rerank too"):
        index.search("银行", rerank_weight=0.5)
    with pytest.raises(ValueError, match="give rerank too"):
        index.search_timed("银行", rerank_weight=0.5)
    for bad in (-0.1, 1.5, float("nan"), float("inf"), True, False, "0.5", [0.5]):
        with pytest.raises(QueryError, match="rerank_weight must be a number from 0 to 1"):
            index.search("银行", rerank=reranker, rerank_weight=bad)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="rerank_weight"):
        index.search_timed("银行", rerank=reranker, rerank_weight=2)
    hits, took = index.search_timed("银行卡余额", k=3, rerank=reranker, rerank_weight=np.float32(0.5))
    assert len(hits[0]) == 3 and took.rerank > 0
