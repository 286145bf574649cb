"""The re-ranker's document cache: least-recently-used within a byte budget, shared safely by threads; and the
CrossEncoder using it, on each backend, against its own uncached answers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs

import deepsem
from deepsem.deploy.export import export_onnx
from deepsem.tasks.document_cache import ENTRY_OVERHEAD, KEY_BYTES_PER_TOKEN, DocumentStates

PAIRS = [(a, b) for a, b, _ in make_pairs(40, 6)]
DOCS = list(dict.fromkeys(b for _, b in PAIRS))


def states_of(key: tuple[int, ...]) -> np.ndarray:
    """A deterministic (len, 4) array per key, so that a wrong entry shows."""
    return np.tile(np.asarray(key, np.float32)[:, None], (1, 4)) + sum(key)


def entry(key: tuple[int, ...]) -> int:
    return states_of(key).nbytes + ENTRY_OVERHEAD + KEY_BYTES_PER_TOKEN * len(key)


class Counting:
    def __init__(self) -> None:
        self.calls: list[list[tuple[int, ...]]] = []

    def __call__(self, keys: list[tuple[int, ...]]) -> list[np.ndarray]:
        self.calls.append(list(keys))
        return [states_of(k) for k in keys]


def test_misses_are_computed_once_and_hits_are_not() -> None:
    cache, compute = DocumentStates(10**6), Counting()
    got = cache.get([[1, 2], [3], [1, 2]], compute)
    assert compute.calls == [[(1, 2), (3,)]]  # each missing document once, in order
    assert all(np.array_equal(g, states_of(k)) for g, k in zip(got, [(1, 2), (3,), (1, 2)], strict=True))
    cache.get([(3,), (4, 5)], compute)
    assert compute.calls[1:] == [[(4, 5)]]
    assert cache.stats() | {"mb": 0} == {"documents": 3, "mb": 0, "max_mb": round(10**6 / 2**20, 3), "hits": 1,
                                         "misses": 4}
    assert cache.bytes == entry((1, 2)) + entry((3,)) + entry((4, 5))


def test_the_least_recently_used_go_first_and_the_budget_holds() -> None:
    one = entry((1, 1))
    cache, compute = DocumentStates(3 * one), Counting()
    cache.get([(1, 1), (2, 2), (3, 3)], compute)
    cache.get([(1, 1)], compute)  # used again: (2, 2) is now the oldest
    cache.get([(4, 4)], compute)
    assert len(cache) == 3 and cache.bytes <= 3 * one
    compute.calls.clear()
    cache.get([(1, 1), (3, 3), (4, 4)], compute)
    assert compute.calls == []
    cache.get([(2, 2)], compute)
    assert compute.calls == [[(2, 2)]]
    big = tuple(range(50))  # larger than the whole budget: answered, not kept
    assert np.array_equal(cache.get([big], compute)[0], states_of(big)) and len(cache) == 3
    cache.clear()
    assert (len(cache), cache.bytes, cache.hits, cache.misses) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="at least 1 byte"):
        DocumentStates(0)


def test_threads_share_it_safely() -> None:
    cache = DocumentStates(40 * entry((1, 2, 3)))
    wrong: list[tuple[int, ...]] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            keys = [tuple(int(t) for t in rng.integers(1, 9, size=3)) for _ in range(5)]
            for key, got in zip(keys, cache.get(keys, lambda ks: [states_of(k) for k in ks]), strict=True):
                if not np.array_equal(got, states_of(key)):
                    wrong.append(key)
            texts = ["".join(chr(97 + t) for t in key) for key in keys]  # the text -> ids map, shared too
            ids = cache.token_ids(texts, lambda ts: [[ord(c) - 97 for c in t] for t in ts])
            wrong.extend(key for key, got in zip(keys, ids, strict=True) if got != key)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    held = list(cache._entries.items())
    assert cache.bytes == sum(entry(k) for k, _ in held) <= cache.max_bytes
    assert cache.hits + cache.misses == 4 * 300 * 5


def test_token_ids_are_remembered_by_text_within_their_own_bound() -> None:
    from deepsem.tasks.document_cache import BYTES_PER_TEXT

    cache = DocumentStates(3 * BYTES_PER_TEXT)  # three texts
    assert cache.max_texts == 3
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> list[list[int]]:  # an independent tokenizer: each character's code point
        calls.append(list(texts))
        return [[ord(c) for c in t] for t in texts]

    assert cache.token_ids(["ab", "c", "ab"], encode) == [(97, 98), (99,), (97, 98)]
    assert calls == [["ab", "c"]]  # each missing text once
    assert cache.token_ids(["c", "ab"], encode) == [(99,), (97, 98)] and len(calls) == 1  # remembered
    cache.token_ids(["d"], encode)  # three held; "ab" was used last but one, "c" before it
    cache.token_ids(["ab"], encode)
    cache.token_ids(["e"], encode)  # over the bound: "c", the least recently used, goes
    calls.clear()
    assert cache.token_ids(["ab", "d", "e"], encode) == [(97, 98), (100,), (101,)] and calls == []
    assert cache.token_ids(["c"], encode) == [(99,)] and calls == [["c"]]
    assert cache.stats()["documents"] == 0  # texts are not documents' states: the counts are the states'
    cache.clear()
    calls.clear()
    cache.token_ids(["ab"], encode)
    assert calls == [["ab"]]


def test_a_cached_cross_encoder_tokenizes_a_document_met_again_not_again(
        tiny_reranker: tuple[deepsem.CrossEncoder, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, directory = tiny_reranker
    ce = deepsem.load(directory).cache_documents(16)
    want = deepsem.load(directory).rank(PAIRS[0][0], DOCS[:12])
    seen: list[str] = []
    original = ce.tokenizer.encode_batch
    monkeypatch.setattr(ce.tokenizer, "encode_batch", lambda texts: seen.extend(texts) or original(texts))
    first = ce.rank(PAIRS[0][0], DOCS[:12])
    assert [i for i, _ in first] == [i for i, _ in want]
    np.testing.assert_allclose([p for _, p in first], [p for _, p in want], atol=1e-6)
    assert sorted(seen) == sorted([PAIRS[0][0], *DOCS[:12]])
    seen.clear()
    got = ce.rank(PAIRS[1][0], DOCS[:12])  # the same documents: only the new query is tokenized
    assert seen == [PAIRS[1][0]]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in deepsem.load(directory).rank(PAIRS[1][0],
                                                                                              DOCS[:12])], atol=1e-6)
    seen.clear()
    ce.score([(PAIRS[2][0], DOCS[0]), (PAIRS[3][0], DOCS[20])])  # score() reads the same map
    assert sorted(seen) == sorted([PAIRS[2][0], PAIRS[3][0], DOCS[20]])


def test_a_cached_cross_encoder_answers_as_without(tiny_reranker: tuple[deepsem.CrossEncoder, Path]) -> None:
    _, directory = tiny_reranker
    plain, cached = deepsem.load(directory), deepsem.load(directory).cache_documents(16)
    calls: list[tuple[str, int]] = []
    for name in ("encode_documents", "score_and_encode"):
        method = getattr(cached.model, name)

        def counting(*args, _name=name, _method=method):  # type: ignore[no-untyped-def]
            calls.append((_name, len(args[2 if _name == "score_and_encode" else 0])))
            return _method(*args)

        setattr(cached.model, name, counting)
    query = PAIRS[0][0]
    want = plain.rank(query, DOCS)
    got = cached.rank(query, DOCS)
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-6, rtol=0)
    # the new documents' states came from the pass that scored them: no separate encoding
    assert {n for n, _ in calls} == {"score_and_encode"} and sum(k for _, k in calls) == len(DOCS)
    assert cached.document_cache["misses"] == cached.document_cache["documents"] == len(DOCS)  # type: ignore[index]
    calls.clear()
    again = cached.rank(PAIRS[1][0], DOCS[::-1])  # other query, same documents: nothing encoded again
    assert calls == [] and cached.document_cache["hits"] == len(DOCS)  # type: ignore[index]
    # held and new documents in one call: under three quarters held, all in one pass; from there, apart
    new = [DOCS[0][::-1] + DOCS[k] for k in (1, 2, 3)]  # known characters, texts not met before
    assert not set(new) & set(DOCS)
    for mixed, passed in (([*DOCS[:5], *new[:2]], 7), ([*DOCS[:6], new[2]], 1)):
        calls.clear()
        np.testing.assert_allclose([p for _, p in cached.rank(query, mixed)],
                                   [p for _, p in plain.rank(query, mixed)], atol=1e-6, rtol=0)
        assert sum(k for _, k in calls) == passed
    assert cached.document_cache["documents"] == len(DOCS) + 3  # type: ignore[index]
    np.testing.assert_allclose([p for _, p in again], [p for _, p in plain.rank(PAIRS[1][0], DOCS[::-1])],
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(cached.score(PAIRS), plain.score(PAIRS), atol=1e-6, rtol=0)  # many queries
    assert plain.document_cache is None and cached.cache_documents(0).document_cache is None
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="max_mb"):
            plain.cache_documents(bad)  # type: ignore[arg-type]


def test_encode_documents_fills_the_cache_ahead(tiny_reranker: tuple[deepsem.CrossEncoder, Path]) -> None:
    _, directory = tiny_reranker
    ce = deepsem.load(directory)
    with pytest.raises(ValueError, match="call cache_documents"):
        ce.encode_documents(DOCS)
    ce.cache_documents(16)
    assert ce.encode_documents(DOCS) == len(DOCS)
    ce.rank(PAIRS[0][0], DOCS[:10])
    assert ce.document_cache["hits"] == 10  # type: ignore[index]
    tiny = deepsem.load(directory).cache_documents(1e-3)  # 1 KB: a few documents, the latest
    assert 0 < tiny.encode_documents(DOCS) < len(DOCS) and tiny.document_cache["mb"] <= 1e-3  # type: ignore[index]


def test_onnx_backends_with_the_cache(tiny_reranker: tuple[deepsem.CrossEncoder, Path], tmp_path: Path) -> None:
    _, directory = tiny_reranker
    plain = deepsem.load(directory)
    query, want = PAIRS[2][0], plain.score([(PAIRS[2][0], d) for d in DOCS])
    memory = deepsem.load(directory, backend="onnx").cache_documents(16)
    for _ in range(2):  # states computed, then read back
        np.testing.assert_allclose(memory.score([(query, d) for d in DOCS]), want, atol=1e-5, rtol=0)
    assert memory.document_cache["hits"] == len(DOCS)  # type: ignore[index]
    export_onnx(plain, tmp_path / "ce8.onnx", quantize="int8")
    int8 = deepsem.load(directory, backend="onnx", onnx=tmp_path / "ce8.onnx")
    uncached = int8.score([(query, d) for d in DOCS])
    int8.cache_documents(16)
    cached = int8.score([(query, d) for d in DOCS])
    assert np.abs(cached - want).max() < 0.05 and np.abs(cached - uncached).max() < 0.05
    assert int8.document_cache["misses"] == len(DOCS)  # type: ignore[index]
    # its sessions run in turn (new documents, then held ones): their threads do not spin between runs
    for part in ("reranker", "documents", "encoded"):
        options = int8._onnx[part].session.get_session_options()  # type: ignore[index]
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    int8.use_backend("torch")  # another backend: the states it computed are forgotten, the budget kept
    assert int8.document_cache == {"documents": 0, "mb": 0.0, "max_mb": 16.0, "hits": 0, "misses": 0}
    np.testing.assert_allclose(int8.score([(query, d) for d in DOCS]), want, atol=1e-6, rtol=0)
