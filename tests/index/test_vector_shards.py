"""A corpus encoded in shards (deepsem.index.shards): the vectors, resuming, parts, and index build from them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import deepsem
from deepsem.errors import ConfigError, IndexFileError
from deepsem.index import Index
from deepsem.index import shards as shards_module
from deepsem.index.corpus import corpus_shards, read_corpus
from deepsem.index.shards import Split, VectorShards, encode_shards, merge_manifests, write_merged_manifest

WORDS = ["银行", "还款", "信用卡", "火车", "车票", "医院", "医生", "天气", "下雨", "余额", "账户", "手机"]


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(WORDS, size=int(rng.integers(1, 5)))) for _ in range(n)]


def make_corpus(root: Path) -> list[tuple[str, str]]:
    """Four shards of four formats (+ files a reader skips); the (id, text) of every document in shard order."""
    root.mkdir(parents=True, exist_ok=True)
    a, b, d, e = texts(5, 1), texts(4, 2), texts(6, 3), texts(3, 4)
    (root / "a.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "text": t, "n": i}, ensure_ascii=False) + "\n"
                                          for i, t in enumerate(a)), encoding="utf-8")
    (root / "b.tsv").write_text("id\ttext\n" + "".join(f"b{i}\t{t}\n" for i, t in enumerate(b)), encoding="utf-8")
    (root / "c").mkdir(exist_ok=True)
    (root / "c" / "d.txt").write_text("".join(t + "\n" for t in d), encoding="utf-8")
    pq.write_table(pa.table({"id": [f"e{i}" for i in range(len(e))], "text": e}), root / "e.parquet")
    (root / "_SUCCESS").write_text("")
    (root / ".e.parquet.crc").write_text("junk")
    return ([(f"a{i}", t) for i, t in enumerate(a)] + [(f"b{i}", t) for i, t in enumerate(b)]
            + [(f"c/d.txt:{i + 1}", t) for i, t in enumerate(d)] + [(f"e{i}", t) for i, t in enumerate(e)])


class Killed(BaseException):
    """A process killed at that point (nothing after it runs)."""


def shard_vectors(out: Path) -> np.ndarray:
    shards = VectorShards.open(out)
    return shards[0 : len(shards)]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path / "corpus"
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def other_model_dir(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model with one weight changed: another model of the same shape."""
    import torch

    model = deepsem.load(trained_model_dir)
    with torch.no_grad():
        next(model.model.parameters()).add_(0.5)
    return model.save(tmp_path_factory.mktemp("other") / "m")


def test_shards_are_listed_in_one_sorted_order_and_ids_stay_unique(corpus):
    root, docs = corpus
    assert [s.name for s in corpus_shards(root)] == ["a.jsonl", "b.tsv", "c/d.txt", "e.parquet"]
    assert [s.name for s in corpus_shards(str(root / "*.*"))] == ["a.jsonl", "b.tsv", "e.parquet"]
    assert [(d.id, d.text) for d in read_corpus(root)] == docs
    # one file is read exactly as before: a plain text file's ids are its line numbers
    assert [d.id for d in read_corpus(root / "c" / "d.txt")] == [str(i) for i in range(1, 7)]


def test_vectors_equal_encoding_the_whole_corpus_at_once(trained_model_dir: Path, corpus, tmp_path: Path):
    root, docs = corpus
    report = encode_shards(trained_model_dir, root, tmp_path / "out", chunk=4, batch_size=3)
    assert (report.encoded, report.skipped, report.rows) == (4, 0, len(docs))
    expected = deepsem.load(trained_model_dir).encode([t for _, t in docs], side="doc")
    np.testing.assert_allclose(shard_vectors(tmp_path / "out"), expected, atol=1e-6)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [e["rows"] for e in manifest["shards"]] == [5, 4, 6, 3] and all(e["done"] for e in manifest["shards"])
    assert manifest["corpus"] == ["a.jsonl", "b.tsv", "c/d.txt", "e.parquet"] and manifest["side"] == "doc"
    ids = [json.loads(line) for e in manifest["shards"]
           for line in (tmp_path / "out" / e["ids"]).read_text(encoding="utf-8").splitlines()]
    assert ids == [i for i, _ in docs]


def test_a_killed_run_resumes_with_the_shards_it_had_not_finished(trained_model_dir: Path, corpus, tmp_path: Path,
                                                                   monkeypatch):
    root, _ = corpus
    out = tmp_path / "out"
    real, encoded = shards_module._encode_one, []

    def killed_at_third(semantic, shard, *args, **kwargs):
        entry = real(semantic, shard, *args, **kwargs)  # its vector file is written ...
        encoded.append(shard.name)
        if len(encoded) == 3:
            raise Killed  # ... but the process dies before the manifest records it
        return entry

    monkeypatch.setattr(shards_module, "_encode_one", killed_at_third)
    with pytest.raises(Killed):
        encode_shards(trained_model_dir, root, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["done"] for e in manifest["shards"]] == [True, True, False, False]
    encoded.clear()
    report = encode_shards(trained_model_dir, root, out)
    assert encoded == ["c/d.txt", "e.parquet"] and (report.encoded, report.skipped) == (2, 2)
    encoded.clear()
    assert encode_shards(trained_model_dir, root, out).encoded == 0 and encoded == []
    monkeypatch.undo()
    encode_shards(trained_model_dir, root, tmp_path / "clean")
    np.testing.assert_array_equal(shard_vectors(out), shard_vectors(tmp_path / "clean"))


def test_a_changed_input_is_encoded_again_and_a_touched_one_is_not(trained_model_dir: Path, corpus,
                                                                    tmp_path: Path):
    root, docs = corpus
    out = tmp_path / "out"
    encode_shards(trained_model_dir, root, out)
    said: list[str] = []
    b = root / "b.tsv"
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # same bytes, a newer mtime
    assert encode_shards(trained_model_dir, root, out, log=said.append).encoded == 0
    with open(b, "a", encoding="utf-8") as fh:
        fh.write("b9\t天气下雨\n")
    report = encode_shards(trained_model_dir, root, out, log=said.append)
    assert report.encoded == 1 and report.rows == len(docs) + 1
    assert any(str(b) in line and "changed" in line for line in said)
    texts_now = [d.text for d in read_corpus(root)]
    expected = deepsem.load(trained_model_dir).encode(texts_now, side="doc")
    np.testing.assert_allclose(shard_vectors(out), expected, atol=1e-6)


def test_parts_cover_every_shard_once_and_match_one_process(trained_model_dir: Path, corpus, tmp_path: Path):
    root, _ = corpus
    out = tmp_path / "out"
    one = encode_shards(trained_model_dir, root, out, split=Split(0, 2))
    two = encode_shards(trained_model_dir, root, out, split=Split(1, 2))
    assert one.manifest.name == "manifest.part-0-of-2.json" and two.manifest.name == "manifest.part-1-of-2.json"
    names = [[e["name"] for e in json.loads(m.read_text())["shards"]] for m in (one.manifest, two.manifest)]
    assert names == [["a.jsonl", "c/d.txt"], ["b.tsv", "e.parquet"]]
    assert not (out / "manifest.json").exists()
    encode_shards(trained_model_dir, root, tmp_path / "single")
    np.testing.assert_array_equal(shard_vectors(out), shard_vectors(tmp_path / "single"))
    merged = json.loads(write_merged_manifest(out).read_text())
    assert [e["name"] for e in merged["shards"]] == merged["corpus"] and merged["parts"] == 2
    np.testing.assert_array_equal(shard_vectors(out / "manifest.json"), shard_vectors(tmp_path / "single"))
    # a part run again makes the merge stale: it is removed, and the parts are read again
    encode_shards(trained_model_dir, root, out, split=Split(1, 2))
    assert not (out / "manifest.json").exists()
    assert Split.from_env({"RANK": "3", "WORLD_SIZE": "4"}) == Split(3, 4) and Split.from_env({}) is None
    assert Split.parse(" 1 / 3 ") == Split(1, 3)
    for bad in ("2/2", "1", "-1/2", "a/b"):
        with pytest.raises(ConfigError, match="I/N"):
            Split.parse(bad)


def test_index_build_from_shards_answers_as_encoding_itself(trained_model_dir: Path, corpus, tmp_path: Path):
    root, docs = corpus
    out = tmp_path / "out"
    encode_shards(trained_model_dir, root, out, split=Split(0, 2))
    encode_shards(trained_model_dir, root, out, split=Split(1, 2))
    itself = Index.build(trained_model_dir, root, tmp_path / "i1")
    from_shards = Index.build(trained_model_dir, root, tmp_path / "i2", vectors=out)
    queries = ["银行还款", "火车票", "医生", "天气"]
    assert len(from_shards) == len(docs)
    for a, b in zip(itself.search(queries, k=8), from_shards.search(queries, k=8), strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert from_shards.search("银行", k=len(docs))[0]  # metadata and texts came from the corpus
    assert {h.id: h.metadata for h in from_shards.search(docs[0][1], k=len(docs))[0]}["a0"] == {"n": 0}


def test_errors_name_the_file(trained_model_dir: Path, other_model_dir: Path, corpus, tmp_path: Path):
    root, _ = corpus
    out = tmp_path / "out"
    encode_shards(trained_model_dir, root, out, split=Split(0, 2))
    with pytest.raises(IndexFileError, match=r"manifest\.part-1-of-2\.json: missing: part 1 of 2"):
        merge_manifests(out)
    with pytest.raises(IndexFileError, match=r"manifest\.part-1-of-2\.json: missing"):
        Index.build(trained_model_dir, root, tmp_path / "i", vectors=out)
    with pytest.raises(ConfigError, match=r"manifest\.part-0-of-2\.json: these vectors were made by another model"):
        encode_shards(other_model_dir, root, out, split=Split(0, 2))
    with pytest.raises(ConfigError, match="encoded in 2 parts, this run is part 0 of 3"):
        encode_shards(trained_model_dir, root, out, split=Split(0, 3))
    encode_shards(trained_model_dir, root, out, split=Split(1, 2))
    with pytest.raises(IndexFileError, match="made by another model"):
        Index.build(other_model_dir, root, tmp_path / "i", vectors=out)
    # --overwrite starts over with the other model
    assert encode_shards(other_model_dir, root, out, split=Split(0, 2), overwrite=True).encoded == 2

    single = tmp_path / "single"
    encode_shards(trained_model_dir, root, single)
    manifest = json.loads((single / "manifest.json").read_text())
    first = single / manifest["shards"][0]["vectors"]
    np.save(first, np.zeros((5, 3), np.float32))
    with pytest.raises(IndexFileError, match=rf"{first.name}: vectors of shape \(5, 3\), the manifest says dim"):
        VectorShards.open(single)
    np.save(first, np.zeros((4, 16), np.float32))
    with pytest.raises(IndexFileError, match=rf"{first.name}: 4 rows, the manifest says 5"):
        VectorShards.open(single)
    broken = np.ones((5, 16), np.float32)
    broken[2, 1] = np.nan
    np.save(first, broken)
    with pytest.raises(IndexFileError, match=rf"{first.name}: row 2 .* NaN"):
        Index.build(trained_model_dir, root, tmp_path / "i", vectors=single)

    encode_shards(trained_model_dir, root, single, overwrite=True)
    with open(root / "b.tsv", "a", encoding="utf-8") as fh:
        fh.write("b9\t天气\n")
    with pytest.raises(IndexFileError, match=r"b\.tsv: changed since it was encoded"):
        Index.build(trained_model_dir, root, tmp_path / "i", vectors=single)
    (root / "b.tsv").unlink()
    with pytest.raises(IndexFileError, match=r"'b\.tsv' is missing"):
        Index.build(trained_model_dir, root, tmp_path / "i", vectors=single)
    # documents given as a list are checked id by id against the shards
    with pytest.raises(IndexFileError, match=r"\.ids\.jsonl: row 1 is document 'a0', the corpus has '0'"):
        Index.build(trained_model_dir, ["银行"] * 18, tmp_path / "i", vectors=single)


def test_an_empty_shard_is_a_shard_of_no_rows(trained_model_dir: Path, corpus, tmp_path: Path):
    root, docs = corpus
    (root / "b2.tsv").write_text("id\ttext\n", encoding="utf-8")  # a header and no document
    out = tmp_path / "out"
    assert encode_shards(trained_model_dir, root, out).rows == len(docs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(e["name"], e["rows"]) for e in manifest["shards"]][2] == ("b2.tsv", 0)
    built = Index.build(trained_model_dir, root, tmp_path / "i", vectors=out)
    hit = built.search(docs[-1][1], k=1)[0][0]  # the last shard's vectors sit at their documents' rows
    assert len(built) == len(docs) and hit.text == docs[-1][1] and hit.score == pytest.approx(1.0, abs=1e-4)
