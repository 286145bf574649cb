"""Mining hard negatives: the dense and BM25 candidates against brute-force references, the false-negative guards,
and the file (round trip, atomic write, malformed lines)."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from deepsem.data.hard_negatives import (
    HardNegatives,
    MiningSettings,
    known_positives,
    mine_negatives,
    read_hard_negatives,
    write_hard_negatives,
)
from deepsem.data.lexical import lexical_tokens
from deepsem.data.pairs import TextPairs
from deepsem.errors import DataError
from deepsem.index.negatives import bm25_ranking, mine_hard_negatives

WORDS = ["card", "loan", "repay", "bank", "credit", "limit", "password", "login", "phone", "rate", "fee", "account"]


def _data(seed: int, n_docs: int = 60, n_queries: int = 15) -> tuple[list[str], list[str], TextPairs]:
    """Random texts of a small vocabulary; each query paired (label 1) with 1-3 documents, and once with a
    document as text_b the other way round, and a few label-0 pairs."""
    rng = np.random.default_rng(seed)
    texts = list(dict.fromkeys(" ".join(rng.choice(WORDS, rng.integers(2, 6))) for _ in range(n_docs * 3)))
    docs, queries = texts[:n_docs], texts[n_docs:n_docs + n_queries]
    a, b, y = [], [], []
    for q in queries:
        for d in rng.choice(docs, rng.integers(1, 4), replace=False):
            a.append(q), b.append(str(d)), y.append(1.0)
        a.append(q), b.append(str(rng.choice(docs))), y.append(0.0)
    a.append(docs[0]), b.append(queries[0]), y.append(1.0)  # queries[0] is docs[0]'s positive the other way round
    return queries, docs, TextPairs(a, b, np.asarray(y, np.float32))


def _fake_encoder(seed: int, dim: int = 8):
    """A deterministic vector per text (random, L2-normalised): an independent model for the reference."""
    cache: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)

    def encode(texts, side):
        for t in texts:
            if t not in cache:
                v = rng.normal(size=dim).astype(np.float32)
                cache[t] = v / np.linalg.norm(v)
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)

    return encode


def _reference(query, docs, ranking_scores, excluded, settings, cosine, floor):
    """The rules written out by hand: rank by score (stable), drop excluded, window, then guards, then top."""
    order = [j for j in np.argsort(-ranking_scores, kind="stable") if docs[j] not in excluded]
    out = []
    for rank, j in enumerate(order, start=1):
        if rank <= settings.skip_top or rank > settings.depth or ranking_scores[j] <= -np.inf:
            continue
        if settings.margin is not None and floor is not None and cosine[j] > floor - settings.margin:
            continue
        if settings.max_score is not None and cosine[j] > settings.max_score:
            continue
        out.append((docs[j], rank))
    return out[: settings.per_query]


@pytest.mark.parametrize("settings", [MiningSettings(per_query=5, depth=20, skip_top=0),
                                      MiningSettings(per_query=4, depth=25, skip_top=3, margin=0.1),
                                      MiningSettings(per_query=30, depth=40, skip_top=2, max_score=0.3)])
def test_dense_mining_matches_brute_force_numpy(settings: MiningSettings) -> None:
    _, docs, pairs = _data(1)
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, pairs.labels, strict=True) if y > 0.5))
    encode = _fake_encoder(2)
    positives = known_positives(pairs.text_a, pairs.text_b, pairs.labels)
    mined = mine_negatives(queries, docs, positives, settings, encode=encode, source="dense", block=4)
    d = encode(docs, "doc")
    assert [r.query for r in mined.rows] == queries and mined.stats["negatives"] > 0
    if settings.margin is not None:
        assert mined.stats["dropped_by_margin"] > 0  # the guard had something to do
    if settings.max_score is not None:
        assert mined.stats["dropped_by_max_score"] > 0
    for row in mined.rows:
        cosine = d @ encode([row.query], "query")[0]
        own = positives.get(row.query, set())
        pos = [docs.index(p) for p in own if p in docs and p != row.query]
        floor = float(cosine[pos].min()) if pos else None
        expected = _reference(row.query, docs, cosine, own | {row.query}, settings, cosine, floor)
        assert [(n.text, n.rank) for n in row.negatives] == expected
        for n in row.negatives:
            assert n.source == "dense" and n.score == pytest.approx(float(cosine[docs.index(n.text)]), abs=1e-5)
            assert settings.skip_top < n.rank <= settings.depth
            assert settings.margin is None or floor is None or n.score <= floor - settings.margin + 1e-6
            assert settings.max_score is None or n.score <= settings.max_score + 1e-6


def test_bm25_mining_matches_bm25s_scores_computed_directly() -> None:
    _, docs, pairs = _data(3)
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, pairs.labels, strict=True) if y > 0.5))
    positives = known_positives(pairs.text_a, pairs.text_b, pairs.labels)
    settings = MiningSettings(per_query=6, depth=15, skip_top=1)
    encode = _fake_encoder(4)
    mined = mine_negatives(queries, docs, positives, settings, encode=encode, source="bm25",
                           lexical=bm25_ranking(docs))
    engine = bm25s.BM25(k1=1.5, b=0.75)
    engine.index([lexical_tokens(t) for t in docs], show_progress=False)
    for row in mined.rows:
        ids = engine.get_tokens_ids(lexical_tokens(row.query))
        scores = np.asarray(engine.get_scores_from_ids(ids), np.float64)
        scores[scores <= 0] = -np.inf  # a document sharing no token is no candidate
        excluded = positives.get(row.query, set()) | {row.query}
        expected = _reference(row.query, docs, scores, excluded, settings, scores, None)
        assert [(n.text, n.rank) for n in row.negatives] == expected
        assert all(n.source == "bm25" for n in row.negatives)
    assert mined.stats["negatives"] > len(queries)


def test_positives_in_either_order_and_the_query_itself_are_never_mined() -> None:
    _, docs, pairs = _data(5, n_docs=30, n_queries=20)
    pairs.text_b.extend(pairs.text_a[:5])  # queries that are also documents: never their own negative
    pairs.text_a.extend(pairs.text_a[:5])
    pairs.labels = np.concatenate([pairs.labels, np.zeros(5, np.float32)])
    docs = list(dict.fromkeys(pairs.text_b))
    positives = known_positives(pairs.text_a, pairs.text_b, pairs.labels)
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, pairs.labels, strict=True) if y > 0.5))
    mined = mine_negatives(queries, docs, positives, MiningSettings(per_query=len(docs), depth=len(docs)),
                           encode=_fake_encoder(6), source="both", lexical=bm25_ranking(docs))
    assert sum(len(r.negatives) for r in mined.rows) > 0
    reverse = {a for a, b, y in zip(pairs.text_a, pairs.text_b, pairs.labels, strict=True) if y > 0.5
               and b == queries[0]}
    assert reverse  # the data holds a positive of queries[0] the other way round
    for row in mined.rows:
        texts = {n.text for n in row.negatives}
        assert row.query not in texts
        direct = {b for a, b, y in zip(pairs.text_a, pairs.text_b, pairs.labels, strict=True) if y > 0.5
                  and a == row.query}
        back = {a for a, b, y in zip(pairs.text_a, pairs.text_b, pairs.labels, strict=True) if y > 0.5
                and b == row.query}
        assert not texts & (direct | back)


def test_both_sources_interleave_by_rank_without_repeats() -> None:
    _, docs, pairs = _data(7)
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, pairs.labels, strict=True) if y > 0.5))
    positives = known_positives(pairs.text_a, pairs.text_b, pairs.labels)
    settings = MiningSettings(per_query=10, depth=10)
    kw = {"encode": _fake_encoder(8), "lexical": bm25_ranking(docs)}
    both = mine_negatives(queries, docs, positives, settings, source="both", **kw)
    dense = mine_negatives(queries, docs, positives, settings, source="dense", **kw)
    lexical = mine_negatives(queries, docs, positives, settings, source="bm25", **kw)
    for b, d, x in zip(both.rows, dense.rows, lexical.rows, strict=True):
        merged: list[str] = []
        for i in range(10):
            for part in (d.negatives, x.negatives):
                if i < len(part) and part[i].text not in merged:
                    merged.append(part[i].text)
        assert [n.text for n in b.negatives] == merged[:10]


def test_random_sampling_is_a_seeded_sample_of_the_window() -> None:
    _, docs, pairs = _data(9)
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, pairs.labels, strict=True) if y > 0.5))
    positives = known_positives(pairs.text_a, pairs.text_b, pairs.labels)
    encode = _fake_encoder(10)
    whole = mine_negatives(queries, docs, positives, MiningSettings(per_query=30, depth=30), encode=encode)
    runs = [mine_negatives(queries, docs, positives, MiningSettings(per_query=3, depth=30, sampling="random",
                                                                     seed=s), encode=encode) for s in (1, 1, 2)]
    assert [[n.text for n in r.negatives] for r in runs[0].rows] == [[n.text for n in r.negatives]
                                                                     for r in runs[1].rows]
    assert [[n.text for n in r.negatives] for r in runs[0].rows] != [[n.text for n in r.negatives]
                                                                     for r in runs[2].rows]
    for row, full in zip(runs[2].rows, whole.rows, strict=True):
        assert len(row.negatives) == 3 and {n.text for n in row.negatives} <= {n.text for n in full.negatives}


def test_settings_are_checked() -> None:
    for bad in (MiningSettings(depth=3, skip_top=3), MiningSettings(per_query=0), MiningSettings(margin=-1),
                MiningSettings(sampling="best")):
        with pytest.raises(ValueError):
            bad.validate()


def test_file_round_trip(tmp_path: Path) -> None:
    _, docs, pairs = _data(11)
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, pairs.labels, strict=True) if y > 0.5))
    mined = mine_negatives(queries, docs, known_positives(pairs.text_a, pairs.text_b, pairs.labels),
                           MiningSettings(per_query=3, depth=9, skip_top=1, margin=0.05), encode=_fake_encoder(12))
    mined.model = "runs/m"
    path = write_hard_negatives(tmp_path / "neg.jsonl", mined)
    back = read_hard_negatives(path)
    assert back.rows == mined.rows and back.settings == mined.settings
    assert (back.source, back.model) == ("dense", "runs/m")
    assert back.by_query() == {r.query: [n.text for n in r.negatives] for r in mined.rows}


def test_a_file_of_another_tool_reads(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"query": "q", "negatives": ["a", "b"]}\n\n{"query": "q", "negatives": [{"text": "c"}, '
                    '"a"]}\n', encoding="utf-8")
    mined = read_hard_negatives(path)
    assert mined.settings is None and mined.by_query() == {"q": ["a", "b", "c"]}


def test_the_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "neg.jsonl"
    path.write_text("old\n", encoding="utf-8")
    _, docs, _ = _data(13)
    mined = mine_negatives(["card loan"], docs, {}, MiningSettings(per_query=2, depth=4), encode=_fake_encoder(1))
    calls = []
    real = json.dumps

    def failing(obj, **kw):
        calls.append(1)
        if len(calls) == 2:  # the header went out, the first row fails
            raise OSError("disk full")
        return real(obj, **kw)

    monkeypatch.setattr("deepsem.data.hard_negatives.json.dumps", failing)
    with pytest.raises(OSError, match="disk full"):
        write_hard_negatives(path, mined)
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["neg.jsonl"]  # no temporary file left


@pytest.mark.parametrize(("line", "field"), [("{not json", None), ('["q"]', None), ('{"negatives": []}', "query"),
                                             ('{"query": "q", "negatives": "a"}', "negatives"),
                                             ('{"query": "q", "negatives": [{"rank": 1}]}', "negatives"),
                                             ('{"format": "other", "version": 1}', "format")])
def test_malformed_lines_name_the_file_line_and_field(tmp_path: Path, line: str, field: str | None) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "ok", "negatives": []}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_hard_negatives(path)
    assert caught.value.line == 2 and caught.value.field == field


def test_mine_hard_negatives_reads_pairs_and_refuses_a_model_without_vectors(tmp_path: Path) -> None:
    *_, pairs = _data(15)

    class Fake:
        dim = 8

        def __init__(self) -> None:
            self.fake = _fake_encoder(16)

        def encode(self, texts, batch_size=512, side="query"):
            return self.fake(texts, side)

    mined = mine_hard_negatives(pairs, Fake(), source="both", settings=MiningSettings(per_query=2, depth=5),
                                out=tmp_path / "n.jsonl")
    assert isinstance(mined, HardNegatives) and read_hard_negatives(tmp_path / "n.jsonl").rows == mined.rows
    with pytest.raises(ValueError, match="not a two-tower model"):
        mine_hard_negatives(pairs, object())
    with pytest.raises(ValueError, match="no positive pairs"):
        mine_hard_negatives(TextPairs(["a"], ["b"], np.zeros(1, np.float32)), Fake())
