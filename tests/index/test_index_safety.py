"""The index treats its directory and its files as untrusted: it touches only its own version folders, refuses
folders that are not indexes, validates CURRENT, reports damaged files in one line naming them, refuses
duplicate ids, NaN/Inf vectors and empty queries, and serialises writers with a lock."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

import deepsem
from deepsem.data.errors import DataError
from deepsem.errors import DeepsemError, IndexFileError, IndexLockedError, ModelFileError, QueryError
from deepsem.index import Document, Index
from deepsem.index import vector_index as vi

TEXTS = ["信用卡怎么还款", "信用卡还款日期", "我想办一张信用卡", "贷款利率是多少", "怎么申请贷款", "银行卡丢了怎么办",
         "挂失银行卡", "火车票怎么买", "买火车票", "手机银行登录不了", "忘记登录密码", "修改密码"]
DOCS = [Document(f"d{i}", t, {"n": i}) for i, t in enumerate(TEXTS)]


def live_docs(index: Index) -> list[tuple[str, str, dict]]:
    return sorted((i, t, m) for batch in index.store.iter_live() for _, i, t, m in batch)


@pytest.fixture(scope="module")
def model(trained_model_dir: Path) -> deepsem.SemanticModel:
    return deepsem.load(trained_model_dir)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine index with a lexical part; tests copy it before damaging anything."""
    directory = tmp_path_factory.mktemp("safety") / "idx"
    Index.build(model, DOCS, directory, lexical=True)
    return directory


@pytest.fixture
def index_dir(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "idx"
    shutil.copytree(built, copy, symlinks=True)
    return copy


# -- item 1: only the index's own version folders are touched --------------------------------------------------
def old_layout(index_dir: Path) -> None:
    """Turn a fresh index into what today's (pre-lock) code leaves: CURRENT -> v000002, no LOCK file, and a
    half-written v000003 of a killed write (a bare docs.sqlite)."""
    current = Index.current_version(index_dir)
    (index_dir / current).rename(index_dir / "v000002")
    (index_dir / "CURRENT").write_text("v000002\n", encoding="utf-8")
    (index_dir / "LOCK").unlink(missing_ok=True)
    (index_dir / "v000003").mkdir()
    shutil.copy(index_dir / "v000002" / "docs.sqlite", index_dir / "v000003" / "docs.sqlite")


def user_folders(directory: Path) -> dict[str, bytes]:
    """Folders a user keeps beside the index, some named like versions; returns file -> content."""
    files = {"v1_photos/cat.jpg": b"\xff\xd8cat", "v2.0-release/notes.txt": b"release", "v000009/mine.txt": b"x",
             "v0000001/data.csv": b"a,b", "v12/readme": b"r"}
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return files


def test_writes_touch_only_the_index_own_version_folders(model, index_dir):
    old_layout(index_dir)
    files = user_folders(index_dir)
    index = Index.load(index_dir)  # a directory written by the current (pre-lock) layout loads
    assert index.version == "v000002" and live_docs(index) == sorted((d.id, d.text, d.metadata) for d in DOCS)
    index.add([Document("new", "新的文档")])
    index.delete(["d0"])
    index.rebuild()
    rebuilt = Index.build(model, DOCS[:5], index_dir)
    assert [d[0] for d in live_docs(rebuilt)] == [f"d{i}" for i in range(5)]
    for name, data in files.items():
        assert (index_dir / name).read_bytes() == data, name
    versions = sorted(p.name for p in index_dir.iterdir() if vi._own_version(p))
    assert versions == [rebuilt.version] and not (index_dir / "v000003").exists()


def test_build_refuses_a_folder_that_is_not_an_index(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"cat")
    with pytest.raises(IndexFileError, match=r"photos: not empty and not a deepsem index .*cat\.jpg.*new or empty"):
        Index.build(model, DOCS, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]  # not even a lock file left behind
    leveldb = tmp_path / "db"
    leveldb.mkdir()
    (leveldb / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(IndexFileError, match="db: not a deepsem index"):
        Index.build(model, DOCS, leveldb)
    assert (leveldb / "CURRENT").read_text() == "MANIFEST-000001\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(IndexFileError, match="file: exists and is not a directory"):
        Index.build(model, DOCS, a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(Index.build(model, DOCS, empty)) == len(DOCS)


def test_a_killed_first_build_does_not_make_the_folder_foreign(model, tmp_path, monkeypatch):
    def killed(directory, version):
        raise KeyboardInterrupt

    monkeypatch.setattr(vi, "_switch", killed)
    with pytest.raises(KeyboardInterrupt):
        Index.build(model, DOCS, tmp_path / "idx")
    monkeypatch.undo()
    (tmp_path / "idx" / ".work-1-0123abcd").mkdir()  # as a SIGKILLed writer leaves it
    assert len(Index.build(model, DOCS, tmp_path / "idx")) == len(DOCS)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir() if not vi._own_version(p)) == ["CURRENT", "LOCK"]


# -- item 3 and 7: CURRENT names one of the index's own folders; version / current_version --------------------
@pytest.mark.parametrize("content", ["../../etc", "/etc", "v1_photos", "v000001/../..", "MANIFEST-1", "",
                                     "v" + "1" * 200, "v000099"])
def test_current_must_name_an_own_version_folder(index_dir, content):
    (index_dir / "v1_photos").mkdir()
    (index_dir / "CURRENT").write_text(content + "\n", encoding="utf-8")
    with pytest.raises(IndexFileError, match="CURRENT"):
        Index.current_version(index_dir)
    with pytest.raises(IndexFileError, match="CURRENT"):
        Index.load(index_dir)


def test_current_cannot_reach_outside_through_links_or_special_files(index_dir, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(index_dir / Index.current_version(index_dir), outside)
    (index_dir / "v000777").symlink_to(outside, target_is_directory=True)
    (index_dir / "CURRENT").write_text("v000777\n")
    with pytest.raises(IndexFileError, match="not a folder inside"):
        Index.load(index_dir)
    (index_dir / "CURRENT").unlink()
    os.mkfifo(index_dir / "CURRENT")  # reading it would block forever
    with pytest.raises(IndexFileError, match="CURRENT: not a regular file"):
        Index.load(index_dir)
    (index_dir / "CURRENT").unlink()
    (index_dir / "CURRENT").write_bytes(b"\xff\xfe\x00v")
    with pytest.raises(IndexFileError, match="not UTF-8"):
        Index.load(index_dir)


def test_version_and_current_version_follow_writes(index_dir):
    reader = Index.load(index_dir)
    assert Index.current_version(index_dir) == reader.version
    writer = Index.load(index_dir)
    writer.add([Document("x", "新的文档")])
    assert Index.current_version(index_dir) == writer.version != reader.version
    assert Index.load(index_dir).version == writer.version


# -- item 4: duplicate ids, NaN/Inf vectors -------------------------------------------------------------------
def test_duplicate_ids_are_named_with_where_they_occur(model, index_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": "a", "text": "一"}, {"id": "b", "text": "二"}, {"id": "c", "text": "三"}, {"id": "a", "text": "四"}]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.jsonl, document 4, field 'id': duplicate document id 'a' \(first at "
                                        r"document 1\)"):
        Index.build(model, corpus, tmp_path / "j")
    assert not (tmp_path / "j" / "CURRENT").exists()
    index = Index.load(index_dir)
    before = (index.version, live_docs(index))
    with pytest.raises(DeepsemError, match=r"document 3: duplicate document id 'n1' \(first at document 1\)"):
        index.add([Document("n1", "甲"), Document("n2", "乙"), Document("n1", "丙")])
    with pytest.raises(DataError, match=r"add\.tsv, document 2, field 'id': duplicate document id 'n1'"):
        index.add([Document("n1", "甲"), Document("n1", "丙")], source=tmp_path / "add.tsv")
    with pytest.raises(ValueError, match="already in the index: d3"):
        index.add([Document("n1", "甲"), Document("d3", "乙")])
    again = Index.load(index_dir)
    assert (again.version, live_docs(again)) == before


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_vectors_are_refused(model, tmp_path, bad):
    vectors = model.encode([d.text for d in DOCS], side="doc")
    vectors[7, 3] = float(bad)
    with pytest.raises(IndexFileError, match=r"vectors: row 7 \(document 8\) holds NaN or infinite"):
        Index.build(model, DOCS, tmp_path / "i", vectors=vectors)
    np.save(tmp_path / "v.npy", vectors)
    with pytest.raises(IndexFileError, match=r"v\.npy: row 7"):
        Index.build(model, DOCS, tmp_path / "i", vectors=tmp_path / "v.npy")
    assert not (tmp_path / "i" / "CURRENT").exists()


def test_vectors_shape_dtype_and_file_are_checked(model, tmp_path):
    vectors = model.encode([d.text for d in DOCS], side="doc")
    with pytest.raises(IndexFileError, match="dtype complex"):
        Index.build(model, DOCS, tmp_path / "i", vectors=vectors.astype(np.complex64))
    with pytest.raises(IndexFileError, match="dtype object"):
        Index.build(model, DOCS, tmp_path / "i", vectors=np.array([[None] * model.dim], dtype=object))
    with pytest.raises(IndexFileError, match=r"shape \(12, 16, 1\) do not fit"):
        Index.build(model, DOCS, tmp_path / "i", vectors=vectors[:, :, None])
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(IndexFileError, match=r"junk\.npy: not a NumPy"):
        Index.build(model, DOCS, tmp_path / "i", vectors=tmp_path / "junk.npy")
    with pytest.raises(IndexFileError, match="is a directory"):
        Index.build(model, DOCS, tmp_path / "i", vectors=tmp_path)
    np.save(tmp_path / "ok.npy", vectors.astype(np.float64))  # other real dtypes are converted
    assert Index.build(model, DOCS, tmp_path / "i", vectors=tmp_path / "ok.npy").search(TEXTS[4], k=1)[0][0].id == "d4"


def test_a_model_that_outputs_nan_is_refused(trained_model_dir, index_dir, tmp_path):
    broken = deepsem.load(trained_model_dir)
    with __import__("torch").no_grad():
        for p in broken.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ModelFileError, match=r"NaN or infinite vectors for document 1 \(id 'd0'\)"):
        Index.build(broken, DOCS, tmp_path / "i")
    index = Index.load(index_dir)
    before = index.version
    index.model = broken
    with pytest.raises(ModelFileError, match=r"NaN or infinite vectors for document 1 \(id 'z'\)"):
        index.add([Document("z", "新的")])
    with pytest.raises(ModelFileError, match="NaN or infinite vectors for query 1"):
        index.search("信用卡", mode="dense")
    assert Index.current_version(index_dir) == before


# -- item 5: empty queries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_empty_queries_are_errors_naming_their_position(index_dir, mode):
    index = Index.load(index_dir)
    for queries, position in [("", 0), ("   \t\n", 0), (["信用卡", " "], 1), (["a", "b", ""], 2)]:
        with pytest.raises(QueryError, match="empty or only whitespace") as caught:
            index.search(queries, k=3, mode=mode)
        assert caught.value.position == position
    vectors = index.model.encode(["信用卡", ""], side="query")
    with pytest.raises(QueryError, match="query 2 of 2 is empty") as caught:
        index.search_encoded(vectors, 3, texts=["信用卡", ""], mode=mode)
    assert caught.value.position == 1
    assert index.search("信用卡", k=1, mode=mode)[0]  # a real query still answers


# -- item 6: damaged files --------------------------------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(3000))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "missing":
        path.unlink()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("name", ["index.faiss", "docs.sqlite"])
@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "directory", "fifo", "missing"])
def test_damaged_faiss_and_sqlite_files_are_named(index_dir, name, how):
    path = index_dir / Index.current_version(index_dir) / name
    damage(path, how)
    with pytest.raises(IndexFileError) as caught:
        Index.load(index_dir)
    message = str(caught.value)
    assert message.startswith(str(path) + ": ") and "\n" not in message and "faiss/" not in message
    assert not (path.parent / (name + "-journal")).exists() and (how != "missing" or not path.exists())


def test_a_faiss_file_of_another_kind_or_dimension_is_refused(index_dir):
    import faiss

    path = index_dir / Index.current_version(index_dir) / "index.faiss"
    faiss.write_index(faiss.IndexFlatIP(16), str(path))
    with pytest.raises(IndexFileError, match="IndexFlatIP, not the IndexIDMap2"):
        Index.load(index_dir)
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(5)), str(path))
    with pytest.raises(IndexFileError, match=r"dimension 5, index\.json says 16"):
        Index.load(index_dir)


def test_a_store_without_the_docs_table_is_refused(index_dir):
    path = index_dir / Index.current_version(index_dir) / "docs.sqlite"
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE other (x)")
    with pytest.raises(IndexFileError, match=r"docs\.sqlite: not a deepsem document store.*no such table"):
        Index.load(index_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
@pytest.mark.parametrize("name", ["index.faiss", "docs.sqlite", "index.json"])
def test_unreadable_files_are_named(index_dir, name):
    path = index_dir / Index.current_version(index_dir) / name
    path.chmod(0)
    with pytest.raises(IndexFileError, match=f"{name}: .*(denied|unable to open)"):
        Index.load(index_dir)


@pytest.mark.parametrize("content, problem", [
    ('{"format": "deepsem.index", ', "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested more than"),
    ('{"format": "deepsem.index", "factory": "Flat", "documents": 1, "model_sha256": "x"}', "field 'dim'"),
    ('{"format": "deepsem.index", "factory": "Flat", "dim": "16", "documents": 1, "model_sha256": "x"}',
     "field 'dim' must be a non-negative integer"),
    ('["deepsem.index"]', "expected a JSON object"),
])
def test_damaged_index_json_is_named(index_dir, content, problem):
    path = index_dir / Index.current_version(index_dir) / "index.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(IndexFileError, match=problem) as caught:
        Index.load(index_dir)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize("how", ["garbage", "missing", "fifo"])
def test_damaged_lexical_files_are_named(index_dir, how):
    lexical = index_dir / Index.current_version(index_dir) / "lexical"
    target = next(p for p in sorted(lexical.iterdir()) if p.suffix == ".json")
    damage(target, how)
    with pytest.raises(IndexFileError, match="lexical"):
        Index.load(index_dir)


def test_the_model_copy_is_still_checked(index_dir):
    weights = index_dir / Index.current_version(index_dir) / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(IndexFileError, match="checksum differs"):
        Index.load(index_dir)
    damage(weights, "fifo")
    with pytest.raises(IndexFileError, match=r"model\.safetensors: the model weights file is not a regular file"):
        Index.load(index_dir)


# -- item 2: the writers' lock ----------------------------------------------------------------------------------
def test_a_second_writer_waits_then_names_the_holder(index_dir, capfd):
    index = Index.load(index_dir)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with vi._write_lock(index_dir, 5):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(30)
        with pytest.raises(IndexLockedError, match=rf"pid {os.getpid()} is writing this index .*lock_timeout"):
            index.add([Document("late", "迟到")], lock_timeout=0.2)
        assert f"waiting for pid {os.getpid()}" in capfd.readouterr().err
    finally:
        release.set()
        thread.join()
    assert Index.load(index_dir).version == index.version  # the refused write left nothing
    assert index.add([Document("late", "迟到")], lock_timeout=0.2) == 1
    assert sorted(p.name for p in index_dir.iterdir() if not vi._own_version(p)) == ["CURRENT", "LOCK"]


def test_the_lock_file_must_be_a_plain_file(index_dir, tmp_path):
    (index_dir / "LOCK").unlink(missing_ok=True)
    (index_dir / "LOCK").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(IndexFileError, match="LOCK: cannot open the index's lock file"):
        Index.load(index_dir).delete(["d1"])
    assert not (tmp_path / "elsewhere").exists()


def test_a_write_under_a_damaged_current_removes_no_version(index_dir):
    index = Index.load(index_dir)
    good = (index_dir / "CURRENT").read_text()
    (index_dir / "CURRENT").write_text("../../etc\n")
    with pytest.raises(IndexFileError, match=r"CURRENT: names '\.\./\.\./etc'"):
        index.delete(["d1"])
    assert (index_dir / index.version / "index.json").is_file()
    (index_dir / "CURRENT").write_text(good)
    assert live_docs(Index.load(index_dir)) == live_docs(index)
