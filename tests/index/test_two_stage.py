"""Two-stage search: the first stage (dense, lexical or hybrid, filters included) fetches each query's best
rerank_top documents, a cross-encoder re-scores them; checked against the first stage's own list sorted by
CrossEncoder.score of the same pairs, computed here independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs

import deepsem
from deepsem.errors import ConfigError, QueryError
from deepsem.index import Document, Index
from deepsem.index.vector_index import RERANK_TOP, Hit, SearchTimings
from deepsem.tasks.rerank import CrossEncoder

QUERIES = ["银行卡余额", "火车站车票", "医生看病"]


@pytest.fixture(scope="module")
def reranker(tiny_reranker: tuple[CrossEncoder, Path]) -> tuple[CrossEncoder, Path]:
    return tiny_reranker


@pytest.fixture(scope="module")
def index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    texts = list(dict.fromkeys(a for a, _, _ in make_pairs(60, 9)))[:40]
    docs = [Document(f"d{i}", t, {"group": i % 2}) for i, t in enumerate(texts)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("two-stage") / "idx", lexical=True)


def expected(index: Index, ce: CrossEncoder, query: str, k: int, top: int, **first: object) -> list[Hit]:
    """The first stage's best max(k, top), sorted (stably) by the cross-encoder's independent pair scores."""
    stage1 = index.search(query, k=max(k, top), **first)[0]  # type: ignore[arg-type]
    scores = ce.score([(query, h.text) for h in stage1])
    order = np.argsort(-scores, kind="stable")[:k]
    return [Hit(stage1[i].id, stage1[i].text, float(scores[i]), stage1[i].metadata, stage1[i].score, int(i) + 1)
            for i in order]


def same(got: list[Hit], want: list[Hit]) -> None:
    assert [h.id for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    np.testing.assert_allclose([h.first_score for h in got], [h.first_score for h in want], atol=1e-6)  # type: ignore[arg-type]
    assert [h.first_rank for h in got] == [h.first_rank for h in want]
    assert [h.metadata for h in got] == [h.metadata for h in want]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize("top", [2, 5, 100])  # fewer than k, k, more than the corpus
def test_reranked_order_is_the_first_stage_sorted_by_the_cross_encoder(index, reranker, mode, top):
    ce, _ = reranker
    found = index.search(QUERIES, k=5, mode=mode, rerank=ce, rerank_top=top)
    assert len(found) == len(QUERIES)
    for query, hits in zip(QUERIES, found, strict=True):
        want = expected(index, ce, query, 5, top, mode=mode)
        same(hits, want)
        assert len(hits) == 5 or (mode == "lexical" and len(hits) == len(index.search(query, k=99, mode=mode)[0]))
        assert all(h.first_rank is not None and 1 <= h.first_rank <= max(5, top) for h in hits)


def test_the_default_candidates_and_a_reordering_that_changes_something(index, reranker):
    ce, _ = reranker
    hits = index.search("银行卡余额", k=10, rerank=ce)[0]
    same(hits, expected(index, ce, "银行卡余额", 10, RERANK_TOP))
    assert [h.first_rank for h in hits] != list(range(1, 11))  # the cross-encoder did reorder the list


def test_filters_apply_in_the_first_stage(index, reranker):
    ce, _ = reranker
    for mode in ("dense", "hybrid"):
        hits = index.search("银行卡余额", k=4, filter={"group": 1}, mode=mode, rerank=ce, rerank_top=8)[0]
        assert hits and all(h.metadata["group"] == 1 for h in hits)
        same(hits, expected(index, ce, "银行卡余额", 4, 8, filter={"group": 1}, mode=mode))


def test_a_path_is_loaded_once_and_gives_what_the_object_gives(index, reranker):
    ce, path = reranker
    by_path = index.search(QUERIES, k=3, rerank=path, rerank_top=10)
    by_str = index.search(QUERIES, k=3, rerank=str(path), rerank_top=10)
    by_object = index.search(QUERIES, k=3, rerank=ce, rerank_top=10)
    for a, b, c in zip(by_path, by_str, by_object, strict=True):
        assert [h.to_dict() for h in a] == [h.to_dict() for h in b]
        same(a, c)
    assert index.reranker(path) is index.reranker(str(path))  # cached on the index
    assert index.reranker(path) is not ce and isinstance(index.reranker(path), CrossEncoder)
    # with its document cache: each document encoded once; the search by str re-ranked its 3 x 10 from it
    cache = index.reranker(path).document_cache
    assert cache is not None and cache["misses"] == cache["documents"] and cache["hits"] >= len(QUERIES) * 10
    assert ce.document_cache is None  # an object given is used as it is


def test_a_two_tower_model_is_refused_as_re_ranker_and_a_cross_encoder_as_index_model(
        index, reranker, trained_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="a two-tower model, not a cross-encoder"):
        index.search("银行", rerank=trained_model_dir)
    with pytest.raises(ConfigError, match="not a cross-encoder"):
        index.search("银行", rerank=deepsem.load(trained_model_dir))
    with pytest.raises(ConfigError, match="not a two-tower model"):
        Index.build(reranker[1], ["银行卡", "火车票"], tmp_path / "idx")


def test_bad_rerank_arguments(index, reranker):
    with pytest.raises(ValueError, match="give rerank too"):
        index.search("银行", rerank_top=5)
    with pytest.raises(QueryError, match="rerank_top must be an integer >= 1"):
        index.search("银行", rerank=reranker[0], rerank_top=0)


def test_one_stage_search_is_unchanged_and_timings_are_reported(index, reranker):
    plain, t = index.search_timed(QUERIES, k=4)
    assert [[h.to_dict() for h in hits] for hits in plain] == \
        [[h.to_dict() for h in hits] for hits in index.search(QUERIES, k=4)]
    assert all(set(h.to_dict()) == {"id", "text", "score", "metadata"} for hits in plain for h in hits)
    assert isinstance(t, SearchTimings) and t.rerank < t.total and t.encode > 0
    for mode in ("dense", "lexical", "hybrid"):
        _, t = index.search_timed(QUERIES, k=4, mode=mode, rerank=reranker[0])
        parts = t.to_dict()
        assert set(parts) == {"encode", "first_stage", "rerank", "total"}
        assert all(v >= 0 for v in parts.values())
        assert t.rerank > 0 and t.total >= max(t.encode, t.first_stage, t.rerank)
        assert (t.encode == 0) == (mode == "lexical")
    reranked = index.search("银行", k=2, rerank=reranker[0])[0]
    assert set(reranked[0].to_dict()) == {"id", "text", "score", "metadata", "first_score", "first_rank"}


def test_the_loaded_re_ranker_stays_on_the_index_when_it_reloads(trained_model_dir, reranker, tmp_path):
    _, path = reranker
    own = Index.build(trained_model_dir, ["银行卡账户余额", "火车站车票", "医院医生看病"], tmp_path / "idx")
    loaded = own.reranker(path)
    own.add([Document("new", "银行卡余额查询")])  # publishes a new version and reloads it
    assert own.reranker(path) is loaded
    assert {h.id for h in own.search("银行卡余额", k=4, rerank=path)[0]} == {"0", "1", "2", "new"}
