"""`deepsem search --rerank DIR --rerank-top N` and `deepsem serve --rerank DIR`, through Typer's runner: answers
checked against Index.search(..., rerank=...), the stage timings printed, misuse refused in one line; with
--rerank-weight W (score fusion), checked against Index.search(..., rerank_weight=W), the weight refused without
--rerank or outside [0, 1]."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.index import Index

runner = CliRunner()
STAGES = re.compile(r"stages \((\d+) quer(?:y|ies)\): encode ([\d.]+) ms, first stage ([\d.]+) ms, rerank ([\d.]+) ms, "
                    r"total ([\d.]+) ms")


@pytest.fixture(scope="module")
def setup(trained_model_dir: Path, tiny_reranker: tuple[object, Path],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("two-stage-cli")
    corpus = d / "c.jsonl"
    texts = list(dict.fromkeys(a for a, _, _ in make_pairs(40, 9)))[:25]
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(texts)), encoding="utf-8")
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus),
                                 "--index", str(d / "idx"), "--lexical"])
    assert result.exit_code == 0, result.output
    return d / "idx", tiny_reranker[1]


def test_search_with_rerank_prints_the_reranked_hits_and_the_stages(setup):
    idx, ce = setup
    queries = ["银行卡余额", "火车站车票"]
    result = runner.invoke(app, ["search", "--index", str(idx), *queries, "-k", "3", "--rerank", str(ce),
                                 "--rerank-top", "6", "--json"])
    assert result.exit_code == 0, result.output
    want = Index.load(idx).search(queries, k=3, rerank=ce, rerank_top=6)
    lines = result.stdout.splitlines()
    assert len(lines) == 2  # the stages line went to stderr: stdout stays one JSON object per query
    for line, hits in zip(lines, want, strict=True):
        got = json.loads(line)["results"]
        assert [h["id"] for h in got] == [h.id for h in hits]
        assert [h["first_rank"] for h in got] == [h.first_rank for h in hits]
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in hits], atol=1e-5)
    stages = STAGES.search(result.stderr)
    assert stages and stages.group(1) == "2" and float(stages.group(4)) > 0

    text = runner.invoke(app, ["search", "--index", str(idx), queries[0], "-k", "3", "--rerank", str(ce)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == f"> {queries[0]}" and STAGES.fullmatch(lines[-1])
    first = Index.load(idx).search(queries[0], k=3, rerank=ce)[0]
    assert lines[1:4] == [f"{r:3d}. {h.score:.4f}  [{h.id}] {h.text}  (first stage #{h.first_rank}, "
                          f"{h.first_score:.4f})" for r, h in enumerate(first, 1)]


def test_search_without_rerank_prints_what_it_did(setup):
    idx, _ = setup
    result = runner.invoke(app, ["search", "--index", str(idx), "银行卡余额", "-k", "2"])
    assert result.exit_code == 0 and "stages" not in result.output and "first stage" not in result.output
    hits = Index.load(idx).search("银行卡余额", k=2)[0]
    assert result.stdout.splitlines()[1:] == [f"{r:3d}. {h.score:.4f}  [{h.id}] {h.text}"
                                              for r, h in enumerate(hits, 1)]
    timed = runner.invoke(app, ["search", "--index", str(idx), "银行卡余额", "--timings", "--mode", "lexical"])
    stages = STAGES.search(timed.stdout)
    assert timed.exit_code == 0 and stages and float(stages.group(2)) == 0.0 and float(stages.group(4)) == 0.0


def test_misuse_is_refused_in_one_line(setup, trained_model_dir):
    idx, ce = setup
    for args, message in [
        (["--rerank-top", "5"], "give --rerank DIR too"),
        (["--rerank", str(trained_model_dir)], "a two-tower model, not a cross-encoder"),
        (["--rerank", str(ce), "--rerank-top", "0"], "--rerank-top"),
    ]:
        result = runner.invoke(app, ["search", "--index", str(idx), "银行", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_serve_with_rerank(setup, trained_model_dir, served_app):
    idx, ce = setup
    result, served = served_app(["serve", "--index", str(idx), "--rerank", str(ce), "--rerank-top", "4",
                                 "--max-rerank-top", "10"])
    assert result.exit_code == 0, result.output
    assert f"re-ranking each search's best 4 documents with {ce}" in result.output
    with TestClient(served) as client:
        body = client.post("/search", json={"queries": "银行卡余额", "k": 3}).json()
        want = Index.load(idx).search("银行卡余额", k=3, rerank=ce, rerank_top=4)[0]
        assert body["reranked"] is True and [h["id"] for h in body["results"][0]] == [h.id for h in want]
        assert client.post("/search", json={"queries": "a", "rerank_top": 11}).status_code == 422
        assert 'data-reranker="4"' in client.get("/").text
    for args, message in [
        (["--model", str(trained_model_dir), "--rerank", str(ce)], "give --index DIR too"),
        (["--index", str(idx), "--rerank", str(ce), "--rerank-top", "300"], "above --max-rerank-top 200"),
        (["--index", str(idx), "--rerank", str(trained_model_dir)], "not a cross-encoder"),
    ]:
        result = runner.invoke(app, ["serve", *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("w", ["0", "0.4", "1"])
def test_search_with_rerank_weight_prints_the_fused_hits(setup, w):
    idx, ce = setup
    queries = ["银行卡余额", "火车站车票"]
    result = runner.invoke(app, ["search", "--index", str(idx), *queries, "-k", "3", "--rerank", str(ce),
                                 "--rerank-top", "8", "--rerank-weight", w, "--json"])
    assert result.exit_code == 0, result.output
    want = Index.load(idx).search(queries, k=3, rerank=ce, rerank_top=8, rerank_weight=float(w))
    for line, hits in zip(result.stdout.splitlines(), want, strict=True):
        assert json.loads(line)["results"] == [h.to_dict() for h in hits]
    text = runner.invoke(app, ["search", "--index", str(idx), queries[0], "-k", "3", "--rerank", str(ce),
                               "--rerank-top", "8", "--rerank-weight", w])
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[1:4] == [f"{r:3d}. {h.score:.4f}  [{h.id}] {h.text}  (first stage "
                                             f"#{h.first_rank}, {h.first_score:.4f})" for r, h in enumerate(want[0], 1)]


def test_rerank_weight_misuse_is_refused_in_one_line(setup):
    idx, ce = setup
    for args, message in [
        (["--rerank-weight", "0.5"], "give --rerank DIR too"),
        (["--rerank", str(ce), "--rerank-weight", "1.5"], "--rerank-weight"),
        (["--rerank", str(ce), "--rerank-weight", "-0.1"], "--rerank-weight"),
        (["--rerank", str(ce), "--rerank-weight", "nan"], "--rerank-weight"),
    ]:
        result = runner.invoke(app, ["search", "--index", str(idx), "银行", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_serve_with_rerank_weight(setup, served_app):
    idx, ce = setup
    result, served = served_app(["serve", "--index", str(idx), "--rerank", str(ce), "--rerank-top", "6",
                                 "--rerank-weight", "0.25"])
    assert result.exit_code == 0, result.output
    assert f"re-ranking each search's best 6 documents with {ce} (score fusion, rerank_weight 0.25)" in result.output
    with TestClient(served) as client:
        body = client.post("/search", json={"queries": "银行卡余额", "k": 3}).json()
        want = Index.load(idx).search("银行卡余额", k=3, rerank=ce, rerank_top=6, rerank_weight=0.25)[0]
        assert [h["id"] for h in body["results"][0]] == [h.id for h in want]
        np.testing.assert_allclose([h["score"] for h in body["results"][0]], [h.score for h in want], atol=1e-6)
        alone = client.post("/search", json={"queries": "银行卡余额", "k": 3, "rerank_weight": 1}).json()
        want = Index.load(idx).search("银行卡余额", k=3, rerank=ce, rerank_top=6)[0]
        assert [h["id"] for h in alone["results"][0]] == [h.id for h in want]
    for args, message in [
        (["--index", str(idx), "--rerank-weight", "0.5"], "give --rerank DIR too"),
        (["--index", str(idx), "--rerank", str(ce), "--rerank-weight", "2"], "--rerank-weight"),
        (["--index", str(idx), "--rerank", str(ce), "--rerank-weight", "nan"], "--rerank-weight"),
    ]:
        result = runner.invoke(app, ["serve", *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
