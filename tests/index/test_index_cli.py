"""`deepsem index ...` and `deepsem search` through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.index import Index

runner = CliRunner()


def test_build_search_add_delete(trained_model_dir: Path, tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    docs = [{"id": "a", "text": "银行卡账户余额"}, {"id": "b", "text": "火车站车票"}, {"id": "c", "text": "医院医生"}]
    corpus.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    idx = tmp_path / "idx"
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus),
                                 "--index", str(idx), "--check-recall"])
    assert result.exit_code == 0, result.output
    assert "indexed 3 documents" in result.output and "recall@10 against exact search: 1.0000" in result.output

    result = runner.invoke(app, ["search", "--index", str(idx), "火车票", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.splitlines()[0])
    expected = Index.load(idx).search("火车票", k=2)[0]
    assert [r["id"] for r in answer["results"]] == [h.id for h in expected]
    assert answer["results"][0]["score"] == expected[0].score

    queries = tmp_path / "q.txt"
    queries.write_text("医院\n\n银行\n", encoding="utf-8")
    result = runner.invoke(app, ["search", "--index", str(idx), "--queries", str(queries), "-k", "1"])
    assert result.exit_code == 0 and result.output.count("> ") == 2

    more = tmp_path / "more.txt"
    more.write_text("天气下雨\n", encoding="utf-8")
    assert runner.invoke(app, ["index", "add", "--index", str(idx), "--corpus", str(more)]).exit_code == 0
    result = runner.invoke(app, ["index", "delete", "--index", str(idx), "a", "zzz"])
    assert "deleted 1 of 2 ids; 3 in the index" in result.output
    result = runner.invoke(app, ["index", "rebuild", "--index", str(idx), "--factory", "HNSW8"])
    assert result.exit_code == 0, result.output
    stats = json.loads(runner.invoke(app, ["index", "stats", "--index", str(idx)]).output)
    assert stats["documents"] == 3 and stats["factory"] == "HNSW8"


def test_errors_are_clear(trained_model_dir: Path, tmp_path: Path):
    result = runner.invoke(app, ["search", "--index", str(tmp_path), "x"])
    assert result.exit_code == 2 and "not a deepsem index" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": ""}\n', encoding="utf-8")
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(bad),
                                 "--index", str(tmp_path / "i")])
    assert result.exit_code == 2 and "bad.jsonl, line 1, field 'text'" in result.output
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(bad),
                                 "--index", str(tmp_path / "i"), "--factory", "Nope"])
    assert result.exit_code == 2
