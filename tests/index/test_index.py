"""The vector index: Faiss + SQLite + model, checked against a brute-force numpy scan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs

import deepsem
from deepsem.data.errors import DataError
from deepsem.errors import ConfigError
from deepsem.index import Document, Index, iter_corpus
from deepsem.index import vector_index as vi


def corpus_file(tmp_path: Path, n: int = 300) -> tuple[Path, list[str]]:
    texts = list(dict.fromkeys(t for a, b, _ in make_pairs(n, 11) for t in (a, b)))
    path = tmp_path / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"d{i}", "text": t, "parity": i % 2}, ensure_ascii=False) + "\n")
    return path, texts


@pytest.fixture(scope="module")
def flat_index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Index, list[str]]:
    tmp = tmp_path_factory.mktemp("index")
    path, texts = corpus_file(tmp)
    return Index.build(trained_model_dir, path, tmp / "idx", "Flat"), texts


def brute_force(model: deepsem.SemanticModel, texts: list[str], queries: list[str], k: int):
    docs = model.encode(texts, side="doc")
    q = model.encode(queries, side="query")
    scores = q @ docs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("n_queries", [1, 3, 40])  # below and above the batched exact path
def test_flat_search_equals_brute_force(flat_index, n_queries):
    index, texts = flat_index
    queries = texts[:n_queries]
    results = index.search(queries, k=5)
    order, scores = brute_force(index.model, texts, queries, 5)
    for hits, o, s in zip(results, order, scores, strict=True):
        np.testing.assert_allclose([h.score for h in hits], s, atol=1e-5)
        # same scores in the same order (ties may swap ids, so compare the score of each returned id)
        assert {h.id for h in hits if h.score > s[-1] + 1e-5} <= {f"d{i}" for i in o}
    assert results[0][0].text == texts[0] and results[0][0].metadata == {"parity": 0}


def test_filter_and_k(flat_index):
    index, texts = flat_index
    hits = index.search(texts[1], k=7, filter={"parity": 1})[0]
    assert len(hits) == 7 and all(h.metadata["parity"] == 1 for h in hits)
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)
    assert len(index.search("银行", k=10_000)[0]) == len(texts)


def test_load_checks_the_model(flat_index, tmp_path):
    index, _ = flat_index
    again = Index.load(index.directory)
    assert len(again) == len(index) and again.stats()["factory"] == "Flat"
    weights = index.directory / index.version / "model" / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + b"\x00\x00\x00\x01")
        with pytest.raises(ValueError, match="checksum"):
            Index.load(index.directory)
    finally:
        weights.write_bytes(original)
    with pytest.raises(FileNotFoundError, match="not a deepsem index"):
        Index.load(tmp_path)


@pytest.mark.parametrize("factory", ["HNSW32", "IVF8,Flat"])
def test_ann_factories_and_recall(trained_model_dir, tmp_path, factory):
    path, texts = corpus_file(tmp_path, 600)
    index = Index.build(trained_model_dir, path, tmp_path / "idx", factory, train_size=200)
    assert len(index) == len(texts)
    recall = index.check_recall(k=5, n_queries=50)
    assert 0.5 < recall <= 1.0
    assert index.search(texts[3], k=1)[0][0].score > 0.99  # a document finds itself


def test_add_delete_rebuild(trained_model_dir, tmp_path):
    path, texts = corpus_file(tmp_path, 100)
    index = Index.build(trained_model_dir, path, tmp_path / "idx")
    n = len(index)
    assert index.add([Document("new", "火车站车票", {"parity": 9})]) == 1
    assert len(index) == n + 1 and index.search("火车站车票", k=1)[0][0].id == "new"
    with pytest.raises(ValueError, match="already in the index"):
        index.add([Document("new", "别的")])
    assert index.delete(["new", "d0", "missing"]) == 2
    top = index.search(["火车站车票", texts[0]], k=3)
    assert all(h.id not in ("new", "d0") for hits in top for h in hits)
    assert Index.load(index.directory).stats()["deleted"] == 2
    index.rebuild("HNSW16")
    assert index.stats() == {**index.stats(), "documents": n - 1, "deleted": 0, "factory": "HNSW16"}
    assert len([p for p in index.directory.iterdir() if p.name.startswith("v")]) == 1


def test_a_killed_write_leaves_the_previous_index(trained_model_dir, tmp_path, monkeypatch):
    path, texts = corpus_file(tmp_path, 60)
    index = Index.build(trained_model_dir, path, tmp_path / "idx")

    def killed(directory, version):
        raise KeyboardInterrupt

    monkeypatch.setattr(vi, "_switch", killed)
    with pytest.raises(KeyboardInterrupt):
        Index.build(trained_model_dir, [Document("x", "别的")], tmp_path / "idx")
    with pytest.raises(KeyboardInterrupt):
        index.add([Document("y", "别的")])
    monkeypatch.undo()
    again = Index.load(tmp_path / "idx")
    assert len(again) == len(texts) and again.search(texts[0], k=1)[0][0].id == "d0"
    again.add([Document("z", "别的")])  # the next write clears the leftovers
    assert len([p for p in (tmp_path / "idx").iterdir() if p.name.startswith("v")]) == 1


def test_corpus_formats_and_errors(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\ttext\tlang\n1\t你好\tzh\n2\thello\ten\n", encoding="utf-8")
    docs = list(iter_corpus(tsv))
    assert [(d.id, d.text, d.metadata) for d in docs] == [("1", "你好", {"lang": "zh"}), ("2", "hello", {"lang": "en"})]
    txt = tmp_path / "c.txt"
    txt.write_text("第一\n\n第二\n", encoding="utf-8")
    assert [(d.id, d.text) for d in iter_corpus(txt)] == [("1", "第一"), ("3", "第二")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2, field 'text'"):
        list(iter_corpus(bad))
    assert [d.id for d in iter_corpus(bad, skip_bad_rows=True)] == ["1"]
    no_text = tmp_path / "n.tsv"
    no_text.write_text("id\tbody\n1\tx\n", encoding="utf-8")
    with pytest.raises(DataError, match="no 'text' column"):
        list(iter_corpus(no_text))


def test_duplicate_ids_and_bad_factory(trained_model_dir, tmp_path):
    with pytest.raises(ValueError, match="duplicate document id"):
        Index.build(trained_model_dir, [Document("a", "x"), Document("a", "y")], tmp_path / "i")
    with pytest.raises(ValueError, match="bad Faiss factory"):
        Index.build(trained_model_dir, ["x"], tmp_path / "j", "NoSuchIndex")


def test_precomputed_vectors(trained_model_dir, tmp_path):
    model = deepsem.load(trained_model_dir)
    texts = ["银行卡余额", "火车站", "医院"]
    vectors = model.encode(texts, side="doc")
    index = Index.build(model, texts, tmp_path / "i", vectors=vectors)
    assert [h.text for h in index.search("火车站", k=1)[0]] == ["火车站"]
    with pytest.raises(ValueError, match="vectors given"):
        Index.build(model, texts, tmp_path / "j", vectors=vectors[:2])
    with pytest.raises(ValueError, match="do not fit"):
        Index.build(model, texts, tmp_path / "k", vectors=vectors[:, :3])


def test_search_params_are_kept_and_applied(trained_model_dir, tmp_path):
    import faiss

    path, _ = corpus_file(tmp_path, 100)
    index = Index.build(trained_model_dir, path, tmp_path / "h", "HNSW16")
    assert index.meta["search_params"] == "efSearch=128"
    assert faiss.downcast_index(Index.load(tmp_path / "h").faiss_index.index).hnsw.efSearch == 128
    index = Index.build(trained_model_dir, path, tmp_path / "v", "IVF4,Flat", search_params="nprobe=3",
                        train_size=50)
    assert faiss.downcast_index(Index.load(tmp_path / "v").faiss_index.index).nprobe == 3
    with pytest.raises(ValueError, match="search_params"):
        Index.build(trained_model_dir, path, tmp_path / "x", "HNSW16", search_params="noSuchParam=3")


MODEL_FIXTURES = Path(__file__).parent.parent / "fixtures" / "model_dirs_v1"


@pytest.mark.parametrize("kind", ["classifier", "recommender"])
def test_a_model_that_makes_no_text_vectors_is_refused_by_name(kind: str, tmp_path: Path) -> None:
    directory = MODEL_FIXTURES / kind
    pattern = f"^{re.escape(str(directory))}: a (Classifier|Recommender), not a two-tower model"
    with pytest.raises(ConfigError, match=pattern):
        Index.build(directory, ["some text"], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_the_model_comes_through_the_registry(tmp_path: Path) -> None:
    index = Index.build(MODEL_FIXTURES / "two_tower", ["一个文档", "another one"], tmp_path / "idx")
    assert type(index.model) is type(deepsem.load(MODEL_FIXTURES / "two_tower"))
    assert index.search("another one", k=1)[0][0].id == "1"



def test_index_imports_no_task_module_and_no_faiss() -> None:
    """index/ reaches the tasks through the registry package only, and vectors through deepsem.vectorstore."""
    import ast

    for path in Path(vi.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("deepsem.tasks."), (path.name, name)
                assert name.split(".")[0] != "faiss", (path.name, name)
