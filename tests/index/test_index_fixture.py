"""An index directory written before the redesign (tests/fixtures/index_dir_v1, made by make_index_dir_v1.py)
still loads and gives the same answers in every mode."""

import json
import shutil
from pathlib import Path

import pytest

from deepsem.index import Index

FIXTURE = Path(__file__).parent.parent / "fixtures" / "index_dir_v1"


@pytest.fixture
def old_index(tmp_path: Path) -> Index:
    shutil.copytree(FIXTURE / "index", tmp_path / "index")
    return Index.load(tmp_path / "index")


def _same(got: list[list[dict]], want: list[list[dict]]) -> None:
    assert [[h["id"] for h in hits] for hits in got] == [[h["id"] for h in hits] for hits in want]
    for g_hits, w_hits in zip(got, want, strict=True):
        for g, w in zip(g_hits, w_hits, strict=True):
            assert g["text"] == w["text"] and g["metadata"] == w["metadata"]
            assert g["score"] == pytest.approx(w["score"], abs=1e-5)


def test_old_index_answers_the_same(old_index: Index) -> None:
    expected = json.loads((FIXTURE / "index_expected.json").read_text(encoding="utf-8"))
    queries = expected["queries"]
    assert len(old_index) == 7  # eight documents, one deleted
    assert old_index.lexical is not None
    for mode in ("dense", "lexical", "hybrid"):
        got = [[h.to_dict() for h in hits] for hits in old_index.search(queries, k=4, mode=mode)]
        _same(got, expected["answers"][mode])
    got = [[h.to_dict() for h in hits] for hits in old_index.search(queries, k=3, filter={"lang": "en"})]
    _same(got, expected["answers"]["filtered"])


def test_old_index_takes_new_documents(old_index: Index) -> None:
    old_index.add(["a new document"])
    again = Index.load(old_index.directory)
    assert len(again) == 8
    assert again.search("a new document", k=1, mode="lexical")[0][0].text == "a new document"
