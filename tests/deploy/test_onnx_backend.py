"""``backend="onnx"``: load / index / serve / search / encode answer through onnxruntime as the torch path does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.deploy.export import export_onnx
from deepsem.index import Document, Index
from deepsem.serve import create_app

pytest.importorskip("onnxruntime")

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_dirs_v1"
ROOT = Path(__file__).parents[2]
TEXTS = ["怎么还款", "如何还钱呢", "信用卡 credit card", "", "借呗额度为什么降低了？" * 3]
CORPUS = ["我想还款", "信用卡怎么申请", "借呗额度", "如何提高额度", "还钱的方法", "你好", "hello world", "额度降低了"]


def test_load_onnx_encodes_as_torch():
    torch_model = deepsem.load(FIXTURES / "two_tower")
    onnx_model = deepsem.load(FIXTURES / "two_tower", backend="onnx")
    assert (torch_model.backend, onnx_model.backend) == ("torch", "onnx")
    for side in ("query", "doc"):
        np.testing.assert_allclose(onnx_model.encode(TEXTS, side=side), torch_model.encode(TEXTS, side=side),
                                   atol=1e-5, rtol=0)
    assert onnx_model.encode("怎么还款").shape == (torch_model.dim,)
    want = torch_model.similarity("怎么还款", "如何还钱")
    assert onnx_model.similarity("怎么还款", "如何还钱") == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="backend"):
        deepsem.load(FIXTURES / "two_tower", backend="tensorrt")


def test_loaded_file_and_int8(tmp_path: Path):
    torch_model = deepsem.load(FIXTURES / "two_tower")
    export_onnx(torch_model, tmp_path / "q8.onnx", quantize="int8")
    int8 = deepsem.load(FIXTURES / "two_tower", backend="onnx", onnx=tmp_path / "q8.onnx")
    assert int8.backend_options == {"backend": "onnx", "onnx": tmp_path / "q8.onnx", "precision": "fp32"}
    cosines = (int8.encode(TEXTS) * torch_model.encode(TEXTS)).sum(1)
    assert cosines.min() > 0.99


def test_classifier_and_recommender_answer_as_torch():
    torch_clf = deepsem.load(FIXTURES / "classifier")
    onnx_clf = deepsem.load(FIXTURES / "classifier", backend="onnx")
    np.testing.assert_allclose(onnx_clf.predict_proba(TEXTS), torch_clf.predict_proba(TEXTS), atol=1e-5, rtol=0)
    assert onnx_clf.predict(TEXTS) == torch_clf.predict(TEXTS) or np.allclose(  # ties aside
        [p for row in onnx_clf.predict(TEXTS) for _, p in row], [p for row in torch_clf.predict(TEXTS) for _, p in row],
        atol=1e-5)
    torch_rec = deepsem.load(FIXTURES / "recommender")
    onnx_rec = deepsem.load(FIXTURES / "recommender", backend="onnx")
    items = torch_rec.catalogue.ids
    histories = [[items[0]], [items[1], items[2], items[3]], list(items)]
    np.testing.assert_allclose(onnx_rec.user_vectors(histories), torch_rec.user_vectors(histories), atol=1e-5)
    np.testing.assert_allclose(onnx_rec.user_vectors(histories, [["x"], [], ["y", "z"]]),
                               torch_rec.user_vectors(histories, [["x"], [], ["y", "z"]]), atol=1e-5)
    for got, want in zip(onnx_rec.recommend_many(histories, k=3), torch_rec.recommend_many(histories, k=3),
                         strict=True):
        assert [i for i, _ in got.items] == [i for i, _ in want.items]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx-index") / "idx"
    Index.build(FIXTURES / "two_tower", CORPUS, out, lexical=True)
    return out


def test_index_search_and_reload_keep_the_backend(index_dir: Path, tmp_path: Path):
    torch_index, onnx_index = Index.load(index_dir), Index.load(index_dir, backend="onnx")
    assert onnx_index.model.backend == "onnx" and onnx_index.load_options["backend"] == "onnx"
    for mode in ("dense", "hybrid"):
        pairs = zip(onnx_index.search(TEXTS[:3], k=5, mode=mode), torch_index.search(TEXTS[:3], k=5, mode=mode),
                    strict=True)
        for got, want in pairs:
            assert [h.id for h in got] == [h.id for h in want]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    built = Index.build(deepsem.load(FIXTURES / "two_tower", backend="onnx"), CORPUS, tmp_path / "b")
    assert built.model.backend == "onnx"
    built.add([Document("new", "新的文档")])  # add() opens the new version
    assert built.model.backend == "onnx"  # with the same backend
    assert built.search(["新的文档"], k=1)[0][0].id == "new"


def test_service_with_the_onnx_backend(index_dir: Path):
    torch_index = Index.load(index_dir)
    with TestClient(create_app(Index.load(index_dir, backend="onnx"))) as client:
        got = client.post("/search", json={"queries": ["怎么还款"], "k": 3}).json()
    want = torch_index.search(["怎么还款"], k=3)[0]
    assert [h["id"] for h in got["results"][0]] == [h.id for h in want]


def test_cli_search_and_encode_with_onnx(index_dir: Path, tmp_path: Path):
    runner = CliRunner()
    args = ["search", "--index", str(index_dir), "--json", "怎么还款"]
    torch_out = runner.invoke(app, args)
    onnx_out = runner.invoke(app, [*args, "--backend", "onnx"])
    assert onnx_out.exit_code == 0, onnx_out.output
    assert [h["id"] for h in json.loads(onnx_out.output)["results"]] == \
        [h["id"] for h in json.loads(torch_out.output)["results"]]
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t for t in TEXTS if t), encoding="utf-8")
    for backend in ("torch", "onnx"):
        result = runner.invoke(app, ["encode", "--model", str(FIXTURES / "two_tower"), "--out",
                                     str(tmp_path / f"{backend}.npy"), str(texts), "--backend", backend])
        assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy"), atol=1e-5)
    refused = runner.invoke(app, ["encode", "--model", str(FIXTURES / "two_tower"), "--out", str(tmp_path / "x.npy"),
                                  str(texts), "--onnx", str(tmp_path / "torch.npy")])
    assert refused.exit_code != 0 and "--onnx FILE needs --backend onnx" in refused.output


def test_standalone_script_needs_nothing_of_deepsem(tmp_path: Path):
    """examples/onnx_standalone.py, run with deepsem made unimportable, gives deepsem's vectors."""
    held = deepsem.load(FIXTURES / "two_tower")
    export_onnx(held, tmp_path / "tower.onnx")
    texts = list(TEXTS)
    argv = [str(tmp_path / "tower.onnx"), *texts, "--out", str(tmp_path / "v.npy")]
    code = ("import runpy, sys; sys.modules['deepsem'] = None; "  # any import of deepsem now fails
            f"sys.argv = ['onnx_standalone.py', *{argv!r}]; "
            f"runpy.run_path({str(ROOT / 'examples' / 'onnx_standalone.py')!r}, run_name='__main__')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), held.encode(texts), atol=1e-5, rtol=0)
    refused = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_standalone.py"), str(tmp_path /
                              "tower.onnx"), "a", "--query", "b"], capture_output=True, text=True)
    assert refused.returncode != 0 and "--query is for a re-ranker" in refused.stderr


def test_cli_evaluate_with_onnx(pair_files: tuple[Path, Path], trained_model_dir: Path):
    runner = CliRunner()
    args = ["evaluate", "--model", str(trained_model_dir), str(pair_files[1]), "--json"]
    metrics = {backend: json.loads(runner.invoke(app, [*args, "--backend", backend]).output)
               for backend in ("torch", "onnx")}
    assert metrics["onnx"].keys() == metrics["torch"].keys()
    for key, value in metrics["torch"].items():
        if isinstance(value, float):
            assert metrics["onnx"][key] == pytest.approx(value, abs=1e-4), key
