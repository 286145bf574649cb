"""`deepsem search --rerank-weight W` and `deepsem serve --rerank-weight W` through Typer's runner: answers checked
against Index.search(..., rerank_weight=W), the weight refused without --rerank or outside [0, 1], in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.data.pairs import TextPairs
from deepsem.index import Index
from deepsem.tasks.rerank import train_rerank

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fusion-cli")
    rows = make_pairs(400, 5)
    pairs = TextPairs([a for a, _, _ in rows], [b for _, b, _ in rows], np.array([y for *_, y in rows], np.float32))
    train_rerank(pairs, d / "ce", model={"hidden_size": 8, "embedding_dim": 8},
                 training={"epochs": 1, "batch_size": 32, "lr": 1e-2}, progress=False)
    corpus = d / "c.jsonl"
    texts = list(dict.fromkeys(a for a, _, _ in make_pairs(40, 9)))[:25]
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(texts)), encoding="utf-8")
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus),
                                 "--index", str(d / "idx"), "--lexical"])
    assert result.exit_code == 0, result.output
    return d / "idx", d / "ce"


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


def test_serve_with_rerank_weight(setup, monkeypatch: pytest.MonkeyPatch):
    idx, ce = setup
    captured = {}
    monkeypatch.setattr("uvicorn.run", lambda app_, **kw: captured.update(app=app_))
    result = runner.invoke(app, ["serve", "--index", str(idx), "--rerank", str(ce), "--rerank-top", "6",
                                 "--rerank-weight", "0.25"])
    assert result.exit_code == 0, result.output
    assert f"re-ranking each search's best 6 documents with {ce} (score fusion, rerank_weight 0.25)" in result.output
    with TestClient(captured["app"]) as client:
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
