"""Lexical (BM25) and hybrid search: BM25 against its formula computed by hand, the hybrid ranking against a
brute-force fusion over every document, and the index, CLI and service around them."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.data.lexical import LexicalIndex, lexical_tokens
from deepsem.index import Document, Index
from deepsem.serve.app import Limits, create_app

DOCS = ["信用卡怎么还款", "信用卡还款日期", "我想办一张信用卡", "贷款利率是多少", "怎么申请贷款", "银行卡丢了怎么办",
        "挂失银行卡", "How do I repay my credit card?", "credit card limit", "今天天气很好", "明天会下雨吗",
        "火车票怎么买", "买火车票", "手机银行登录不了", "忘记登录密码", "修改密码", "信用卡额度太低", "提高信用卡额度"]


def bm25_by_hand(docs: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene's BM25 (which, since Lucene 8, leaves out the constant factor k1 + 1 of Robertson's form):
    sum over query tokens t of idf(t) * tf / (tf + k1 (1 - b + b |d| / avgdl)),
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)); a repeated query token counts once per occurrence."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    out = np.zeros(n)
    for j, d in enumerate(docs):
        tf = Counter(d)
        for t in query:
            if t in df:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                out[j] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_lexical_tokens():
    assert lexical_tokens("Hello, 世界! ＡＢＣ 3.14") == ["hello", "世", "界", "abc", "3.14"]
    assert lexical_tokens("!!! ...") == []


def test_bm25_scores_match_the_formula():
    rows = [10 + 3 * i for i in range(len(DOCS))]  # store rows need not be 0..n-1
    lex = LexicalIndex.build(rows, DOCS)
    tokens = [lexical_tokens(d) for d in DOCS]
    for query in ("信用卡还款", "credit card", "怎么怎么办", "银行"):
        np.testing.assert_allclose(lex.scores(query), bm25_by_hand(tokens, lexical_tokens(query)), rtol=1e-5)
    assert not lex.scores("ζ").any() and not len(lex.top(lex.scores("ζ"), 3)[0])  # no known token: no match
    scores = lex.scores("信用卡还款")
    top_scores, top_rows = lex.top(scores, 3)
    assert list(top_rows) == [rows[j] for j in np.argsort(-scores, kind="stable")[:3]]
    assert np.all(np.diff(top_scores) <= 0)
    assert list(lex.scores_of(scores, np.array([rows[1], 9999, -1]))) == [pytest.approx(scores[1]), 0.0, 0.0]


@pytest.fixture(scope="module")
def hybrid_index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    docs = [Document(f"d{i}", t, {"n": i % 3}) for i, t in enumerate(DOCS)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("hyb") / "idx", "Flat", lexical=True,
                       hybrid_weight=0.4)


def brute_force_hybrid(index: Index, query: str, weight: float) -> tuple[list[str], np.ndarray]:
    """w * cosine + (1 - w) * BM25 / max BM25 over every document, from scratch."""
    cosine = index.model.encode([query], side="query")[0] @ index.model.encode(DOCS, side="doc").T
    bm25 = bm25_by_hand([lexical_tokens(d) for d in DOCS], lexical_tokens(query))
    fused = weight * cosine + (1 - weight) * (bm25 / bm25.max() if bm25.max() > 0 else 0)
    order = np.argsort(-fused, kind="stable")
    return [f"d{j}" for j in order], fused[order]


@pytest.mark.parametrize("query", ["信用卡还款", "credit card repay", "火车", "登录密码忘了"])
def test_hybrid_equals_brute_force_fusion(hybrid_index: Index, query: str):
    ids, fused = brute_force_hybrid(hybrid_index, query, 0.4)
    hits = hybrid_index.search(query, k=6)[0]  # default mode: hybrid
    np.testing.assert_allclose([h.score for h in hits], fused[:6], atol=1e-5)
    assert [h.id for h in hits][:1] == ids[:1]


def test_modes(hybrid_index: Index, trained_model_dir: Path, tmp_path: Path):
    lexical = hybrid_index.search("买火车票", k=2, mode="lexical")[0]
    assert [h.id for h in lexical] == ["d12", "d11"]
    dense = hybrid_index.search("买火车票", k=3, mode="dense")[0]
    cos = hybrid_index.model.encode(["买火车票"])[0] @ hybrid_index.model.encode(DOCS, side="doc").T
    np.testing.assert_allclose([h.score for h in dense], np.sort(cos)[::-1][:3], atol=1e-5)
    assert all(h.metadata["n"] == 1 for h in hybrid_index.search("信用卡", k=3, filter={"n": 1})[0])
    assert hybrid_index.stats()["default_mode"] == "hybrid"
    with pytest.raises(ValueError, match="mode must be one of"):
        hybrid_index.search("x", mode="sparse")
    plain = Index.build(trained_model_dir, DOCS[:5], tmp_path / "plain")
    assert plain.stats()["default_mode"] == "dense"
    with pytest.raises(ValueError, match="built without it"):
        plain.search("信用卡", mode="hybrid")
    with pytest.raises(ValueError, match="hybrid_weight"):
        Index.build(trained_model_dir, DOCS[:5], tmp_path / "bad", lexical=True, hybrid_weight=1.5)


@pytest.mark.parametrize("factory", ["HNSW8", "IVF2,Flat"])
def test_hybrid_on_ann_factories_reads_vectors_back(trained_model_dir: Path, tmp_path: Path, factory: str):
    index = Index.build(trained_model_dir, DOCS, tmp_path / "idx", factory, lexical=True, train_size=10)
    _, fused = brute_force_hybrid(index, "信用卡额度", 0.5)
    hits = index.search("信用卡额度", k=4, mode="hybrid")[0]
    np.testing.assert_allclose([h.score for h in hits], fused[:4], atol=1e-5)
    _, fused = brute_force_hybrid(index, "信用卡额度", 0.8)
    hits = index.search("信用卡额度", k=4, hybrid_weight=0.8)[0]  # a per-search weight
    np.testing.assert_allclose([h.score for h in hits], fused[:4], atol=1e-5)
    with pytest.raises(ValueError, match="hybrid_weight"):
        index.search("信用卡额度", hybrid_weight=-0.1)


def test_add_delete_rebuild_keep_the_lexical_part(trained_model_dir: Path, tmp_path: Path):
    docs = [Document(f"d{i}", t) for i, t in enumerate(DOCS)]
    index = Index.build(trained_model_dir, docs, tmp_path / "idx", lexical=True)
    index.add([Document("new", "高铁票退票手续费")])
    assert index.search("退票手续费", k=1, mode="lexical")[0][0].id == "new"
    assert Index.load(tmp_path / "idx").search("退票手续费", k=1, mode="lexical")[0][0].id == "new"
    index.delete(["new", "d12"])
    assert all(h.id not in ("new", "d12") for h in index.search("退票 买火车票", k=5, mode="lexical")[0])
    index.rebuild("HNSW8")
    assert index.stats()["lexical"] and index.search("买火车票", k=1, mode="lexical")[0][0].id == "d11"


def test_damaged_lexical_files_are_a_clear_error(trained_model_dir: Path, tmp_path: Path):
    index = Index.build(trained_model_dir, DOCS, tmp_path / "idx", lexical=True)
    rows = tmp_path / "idx" / index.version / "lexical" / "rows.npy"
    np.save(rows, np.arange(3))
    with pytest.raises(ValueError, match=r"rows\.npy"):
        Index.load(tmp_path / "idx")
    rows.unlink()
    with pytest.raises(ValueError, match="unreadable lexical"):
        Index.load(tmp_path / "idx")
    meta = tmp_path / "idx" / index.version / "index.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "lexical": {"hybrid_weight": "x"}}))
    with pytest.raises(ValueError, match="hybrid_weight"):
        Index.load(tmp_path / "idx")


def test_service_and_cli_modes(hybrid_index: Index, trained_model_dir: Path, tmp_path: Path):
    with TestClient(create_app(hybrid_index, limits=Limits(max_k=5))) as client:
        for mode in (None, "dense", "lexical", "hybrid"):
            body = {"queries": ["信用卡还款", "买火车票"], "k": 3, **({"mode": mode} if mode else {})}
            got = client.post("/search", json=body).json()["results"]
            want = hybrid_index.search(["信用卡还款", "买火车票"], k=3, mode=mode)
            assert [[h["id"] for h in r] for r in got] == [[h.id for h in r] for r in want]
        filtered = client.post("/search", json={"queries": "信用卡", "k": 3, "filter": {"n": 2}, "mode": "lexical"})
        assert all(h["metadata"]["n"] == 2 for h in filtered.json()["results"][0])
        bad = client.post("/search", json={"queries": "x", "k": 2, "mode": "sparse"})
        assert bad.status_code == 422 and "mode must be one of" in bad.json()["message"]
    plain = Index.build(trained_model_dir, DOCS[:5], tmp_path / "plain")
    with TestClient(create_app(plain)) as client:
        bad = client.post("/search", json={"queries": "x", "mode": "lexical"})
        assert bad.status_code == 422 and "built without it" in bad.json()["message"]
        assert str(tmp_path) not in bad.text

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(DOCS)), encoding="utf-8")
    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus),
                                "--index", str(tmp_path / "cli"), "--lexical", "--hybrid-weight", "0.3"])
    assert built.exit_code == 0, built.output
    out = runner.invoke(app, ["search", "--index", str(tmp_path / "cli"), "--mode", "lexical", "--json", "-k", "2",
                              "买火车票"])
    assert out.exit_code == 0 and [h["id"] for h in json.loads(out.output)["results"]] == ["d12", "d11"]
    bad = runner.invoke(app, ["search", "--index", str(tmp_path / "plain"), "--mode", "hybrid", "x"])
    assert bad.exit_code != 0 and "built without it" in bad.output
