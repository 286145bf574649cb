"""The cross-encoder on onnxruntime: ``deepsem export`` of a re-ranker, ``deepsem.load(dir, backend="onnx")``, and the
two-stage search, ``deepsem rerank`` and ``deepsem serve`` running it, each against the torch answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pairs
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.deploy.export import check_export, export_onnx
from deepsem.errors import ConfigError, ModelFileError
from deepsem.index import Index

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

runner = CliRunner()
ROOT = Path(__file__).parents[2]
PAIRS = [(a, b) for a, b, _ in make_pairs(60, 4)] + [("", "银行"), ("x" * 80, "短"), ("短", "y y y " * 30)]


@pytest.fixture(scope="module")
def exported(tiny_reranker: tuple[deepsem.CrossEncoder, Path],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    ce, directory = tiny_reranker
    out = tmp_path_factory.mktemp("onnx-reranker")
    export_onnx(ce, out / "ce.onnx")
    export_onnx(ce, out / "ce8.onnx", quantize="int8")
    return directory, out / "ce.onnx", out / "ce8.onnx"


def test_export_writes_the_graphs_that_match_torch(exported: tuple[Path, Path, Path]):
    directory, fp32, int8 = exported
    ce = deepsem.load(directory)
    report = check_export(ce, fp32)
    assert set(report) == {"reranker", "documents", "encoded"}
    assert all(max_diff <= 1e-5 for max_diff, _ in report.values()), report
    files = {"reranker": fp32, "documents": fp32.with_name("ce.documents.onnx"),
             "encoded": fp32.with_name("ce.encoded.onnx")}
    inputs = {"reranker": ["query_ids", "query_lengths", "doc_ids", "doc_lengths"],
              "documents": ["doc_ids", "doc_lengths"],
              "encoded": ["query_ids", "query_lengths", "doc_ids", "doc_lengths", "doc_states"]}
    for part, file in files.items():
        meta = {p.key: p.value for p in onnx.load(file).metadata_props}
        assert (meta["deepsem.task"], meta["deepsem.part"]) == ("rerank", part)
        assert json.loads(meta["deepsem.tokenizer"])["name"] == ce.tokenizer.name
        assert [i.name for i in onnx.load(file).graph.input] == inputs[part]
    assert "DynamicQuantizeLSTM" in {n.op_type for n in onnx.load(int8).graph.node}
    quantized = check_export(ce, int8)  # int8 activations: each document's states a little further off
    assert quantized["reranker"][1] > 0.99 and quantized["encoded"][1] > 0.99 and quantized["documents"][1] > 0.95
    assert int8.stat().st_size < fp32.stat().st_size


def test_an_export_of_an_earlier_deepsem_still_loads(exported: tuple[Path, Path, Path], tmp_path: Path):
    """Files written before the document cache's graphs: the re-ranker file alone loads and scores; the cache is
    refused with the file's name."""
    directory, fp32, _ = exported
    old = tmp_path / "old.onnx"
    old.write_bytes(fp32.read_bytes())
    ce = deepsem.load(directory, backend="onnx", onnx=old)
    np.testing.assert_allclose(ce.score(PAIRS), deepsem.load(directory).score(PAIRS), atol=1e-5, rtol=0)
    assert set(check_export(ce, old)) == {"reranker"}
    with pytest.raises(ConfigError, match=r"old\.onnx: exported without the document cache's graphs"):
        ce.cache_documents()
    cached = deepsem.load(directory).cache_documents(8)
    cached.score(PAIRS)
    with pytest.raises(ConfigError, match="exported without the document cache's graphs"):
        cached.use_backend("onnx", old)  # the torch states are not kept for another backend
    assert cached.document_cache is None and cached.backend == "onnx"


def test_serve_warns_and_re_ranks_without_the_cache_on_an_old_export(index_dir: Path, exported: tuple[Path, Path, Path],
                                                                     tmp_path: Path, served_app):
    directory, fp32, _ = exported
    old = tmp_path / "old.onnx"
    old.write_bytes(fp32.read_bytes())
    result, served = served_app(["serve", "--index", str(index_dir), "--rerank", str(directory), "--rerank-onnx",
                                 str(old)])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "exported without the document cache's graphs" in result.output
    with TestClient(served) as client:
        assert client.post("/search", json={"queries": "银行卡余额", "k": 3}).json()["reranked"] is True
        assert client.get("/stats").json()["reranker"]["document_cache"] is None


def test_load_with_the_onnx_backend_scores_as_torch(exported: tuple[Path, Path, Path]):
    directory, _, int8 = exported
    torch_ce, onnx_ce = deepsem.load(directory), deepsem.load(directory, backend="onnx")
    assert (torch_ce.backend, onnx_ce.backend) == ("torch", "onnx")
    np.testing.assert_allclose(onnx_ce.score(PAIRS), torch_ce.score(PAIRS), atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx_ce.score(PAIRS, batch_size=4), torch_ce.score(PAIRS), atol=1e-5, rtol=0)
    query, docs = PAIRS[0][0], [b for _, b in PAIRS]
    got, want = onnx_ce.rank(query, docs), torch_ce.rank(query, docs)
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
    assert onnx_ce.score([]).shape == (0,)
    quantized = deepsem.load(directory, backend="onnx", onnx=int8)
    assert quantized.backend_options == {"backend": "onnx", "onnx": int8, "precision": "fp32"}
    assert np.abs(quantized.score(PAIRS) - torch_ce.score(PAIRS)).max() < 0.05



def test_the_onnx_backend_never_runs_nor_switches_the_torch_module(exported: tuple[Path, Path, Path],
                                                                     monkeypatch: pytest.MonkeyPatch):
    directory, fp32, _ = exported
    want = deepsem.load(directory).score(PAIRS)
    for cache in (None, 64):
        ce = deepsem.load(directory, backend="onnx", onnx=fp32).cache_documents(cache)
        ce.model.train()  # a model left in training mode (say, by a caller's fine-tuning) stays so

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the torch module ran on the onnx backend")

        monkeypatch.setattr(ce.model, "forward", refuse)
        monkeypatch.setattr(ce.model, "train", refuse)
        monkeypatch.setattr(ce.model, "eval", refuse)
        for _ in range(2):  # the second time from the document cache, when there is one
            np.testing.assert_allclose(ce.score(PAIRS), want, atol=1e-5, rtol=0)
        assert ce.model.training
        monkeypatch.undo()

def test_a_file_of_other_weights_or_another_task_is_refused(exported: tuple[Path, Path, Path],
                                                           trained_model_dir: Path, tmp_path: Path):
    directory, fp32, _ = exported
    tower = tmp_path / "tower.onnx"
    export_onnx(deepsem.load(trained_model_dir), tower)
    with pytest.raises(ModelFileError, match="holds part 'query', expected 'reranker'"):
        deepsem.load(directory, backend="onnx", onnx=tower)
    ce = deepsem.load(directory)
    ce.model.mlp[3].bias.data += 0.1
    with pytest.raises(ModelFileError, match="other weights"):
        ce.use_backend("onnx", fp32)


@pytest.fixture(scope="module")
def index_dir(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = list(dict.fromkeys(a for a, _, _ in make_pairs(40, 9)))[:25]
    out = tmp_path_factory.mktemp("onnx-two-stage") / "idx"
    Index.build(trained_model_dir, texts, out, lexical=True)
    return out


def test_two_stage_search_with_the_onnx_reranker(index_dir: Path, exported: tuple[Path, Path, Path]):
    directory, _, int8 = exported
    queries = ["银行卡余额", "火车站车票", "天气"]
    want = Index.load(index_dir).search(queries, k=4, rerank=directory, rerank_top=10, mode="hybrid")
    got = Index.load(index_dir).search(queries, k=4, rerank=deepsem.load(directory, backend="onnx"), rerank_top=10,
                                       mode="hybrid")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)
        assert {h.id for h in g} == {h.id for h in w} or np.ptp([h.score for h in w]) < 1e-5

    args = ["search", "--index", str(index_dir), *queries, "-k", "4", "--rerank", str(directory), "--rerank-top",
            "10", "--json"]
    for extra in (["--backend", "onnx"], ["--rerank-onnx", str(int8)]):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line)["results"] for line in result.stdout.splitlines()]
        tolerance = 1e-5 if extra[0] == "--backend" else 0.05
        for hits, w in zip(lines, want, strict=True):
            np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in w], atol=tolerance)
    refused = runner.invoke(app, ["search", "--index", str(index_dir), "银行", "--rerank-onnx", str(int8)])
    assert refused.exit_code == 2 and "give --rerank DIR too" in refused.output
    tower = index_dir.parent / "tower.onnx"  # a file of another part: one error line naming it
    export_onnx(Index.load(index_dir).model, tower, overwrite=True)
    wrong = runner.invoke(app, ["search", "--index", str(index_dir), "银行", "--rerank", str(directory),
                                "--rerank-onnx", str(tower)])
    assert wrong.exit_code != 0 and "expected 'reranker'" in wrong.output and "Traceback" not in wrong.output
    missing = runner.invoke(app, [*args, "--rerank-onnx", str(index_dir.parent / "absent.onnx")])
    assert missing.exit_code == 2 and "absent.onnx" in missing.output


def test_serve_runs_the_reranker_from_its_file(index_dir: Path, exported: tuple[Path, Path, Path], served_app):
    directory, fp32, _ = exported
    result, served = served_app(["serve", "--index", str(index_dir), "--rerank", str(directory), "--rerank-top",
                                 "6", "--rerank-onnx", str(fp32)])
    assert result.exit_code == 0, result.output
    assert f"re-ranking each search's best 6 documents with {directory} on onnxruntime" in result.output
    want = Index.load(index_dir).search("银行卡余额", k=3, rerank=directory, rerank_top=6)[0]
    with TestClient(served) as client:
        body = client.post("/search", json={"queries": "银行卡余额", "k": 3}).json()
        assert client.get("/stats").json()["reranker"]["backend"] == "onnx"
    assert body["reranked"] is True
    np.testing.assert_allclose([h["score"] for h in body["results"][0]], [h.score for h in want], atol=1e-5)
    refused = runner.invoke(app, ["serve", "--index", str(index_dir), "--rerank-onnx", str(fp32)])
    assert refused.exit_code == 2 and "give --rerank DIR too" in refused.output


def test_rerank_cli_on_onnx(exported: tuple[Path, Path, Path], tmp_path: Path):
    directory, fp32, _ = exported
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS if a and b), encoding="utf-8")
    outputs = {}
    for name, extra in [("torch", []), ("onnx", ["--backend", "onnx"]), ("file", ["--backend", "onnx", "--onnx",
                                                                                   str(fp32)])]:
        result = runner.invoke(app, ["rerank", "predict", "--model", str(directory), str(pairs), *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = np.array([float(x) for x in result.stdout.split()])
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], atol=2e-6)
    np.testing.assert_allclose(outputs["file"], outputs["torch"], atol=2e-6)
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in make_pairs(40, 5)), encoding="utf-8")
    got = [json.loads(runner.invoke(app, ["rerank", "evaluate", "--model", str(directory), str(labelled), "--json",
                                          *extra]).stdout) for extra in ([], ["--backend", "onnx"])]
    assert got[1]["accuracy"] == got[0]["accuracy"]
    assert got[1]["roc_auc"] == pytest.approx(got[0]["roc_auc"], abs=1e-6)
    cli = runner.invoke(app, ["export", "--model", str(directory), "--out", str(tmp_path / "cli.onnx")])
    assert cli.exit_code == 0, cli.output
    assert "reranker: onnxruntime against torch on random inputs" in cli.output


def test_standalone_script_reranks_with_nothing_of_deepsem(exported: tuple[Path, Path, Path], tmp_path: Path):
    """examples/onnx_standalone.py with a re-ranker's file, deepsem made unimportable: deepsem's probabilities."""
    directory, fp32, _ = exported
    ce = deepsem.load(directory)
    query, docs = PAIRS[0][0], [b for _, b in PAIRS[:20]] + ["", "银行卡"]
    argv = [str(fp32), "--query", query, *docs, "--out", str(tmp_path / "p.npy")]
    code = ("import runpy, sys; sys.modules['deepsem'] = None; "  # any import of deepsem now fails
            f"sys.argv = ['onnx_standalone.py', *{argv!r}]; "
            f"runpy.run_path({str(ROOT / 'examples' / 'onnx_standalone.py')!r}, run_name='__main__')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ce.score([(query, d) for d in docs]), atol=1e-5, rtol=0)
    printed = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_standalone.py"), str(fp32), "--query",
                              query, *docs[:3]], check=True, capture_output=True, text=True).stdout.splitlines()
    want = ce.rank(query, docs[:3])
    assert [line.split("  ", 1)[1] for line in printed] == [docs[:3][i] for i, _ in want] or \
        np.ptp([p for _, p in want]) < 1e-4  # ties may order either way
    refused = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_standalone.py"), str(fp32), "a"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "give --query" in refused.stderr
