"""`deepsem encode` over a corpus in shards, `--shard I/N`, `--merge-manifest`, and `index build --vectors DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepsem.cli import app

runner = CliRunner()

TEXTS = ["银行卡余额", "信用卡还款", "火车站车票", "医院医生", "天气下雨", "手机银行", "账户余额", "火车票",
         "医生看病", "下雨天气"]


def error_line(result) -> str:
    """The one `error:` line of a failed command (exit 2), with no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three plain-text shards (one text per line) in one folder."""
    root = tmp_path / "corpus"
    root.mkdir()
    for n, part in enumerate((TEXTS[:4], TEXTS[4:7], TEXTS[7:])):
        (root / f"part-{n}.txt").write_text("".join(t + "\n" for t in part), encoding="utf-8")
    return root


def read_shards(out: Path) -> np.ndarray:
    from deepsem.index.shards import VectorShards

    shards = VectorShards.open(out)
    return shards[0 : len(shards)]


def test_shards_give_the_vectors_of_one_file_and_resume(trained_model_dir: Path, corpus: Path, tmp_path: Path):
    whole = tmp_path / "all.txt"
    whole.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    result = runner.invoke(app, ["encode", "--model", str(trained_model_dir), str(whole), "--side", "doc",
                                 "--out", str(tmp_path / "all.npy")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "vectors"
    result = runner.invoke(app, ["encode", "--model", str(trained_model_dir), str(corpus), "--out", str(out),
                                 "--chunk", "2"])
    assert result.exit_code == 0, result.output
    assert "encoded 3 shards, skipped 0" in result.output and "10 vectors" in result.output
    np.testing.assert_allclose(read_shards(out), np.load(tmp_path / "all.npy"), atol=1e-6)
    # a glob pattern (quoted) and the files themselves (a shell's expansion) name the same shards: all done
    for args in ([str(corpus / "part-*.txt")], sorted(str(p) for p in corpus.iterdir())):
        result = runner.invoke(app, ["encode", "--model", str(trained_model_dir), *args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "encoded 0 shards, skipped 3 already done" in result.output


def test_parts_merge_and_index_build_from_them(trained_model_dir: Path, corpus: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "vectors"
    base = ["encode", "--model", str(trained_model_dir), str(corpus), "--out", str(out)]
    result = runner.invoke(app, [*base, "--shard", "0/2"])
    assert result.exit_code == 0 and "(part 0 of 2)" in result.output, result.output
    assert (out / "manifest.part-0-of-2.json").is_file()
    built = ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus), "--vectors", str(out),
             "--index", str(tmp_path / "i2")]
    line = error_line(runner.invoke(app, built))
    assert "manifest.part-1-of-2.json: missing: part 1 of 2" in line
    merge = ["encode", "--model", str(trained_model_dir), "--out", str(out), "--merge-manifest"]
    assert "manifest.part-1-of-2.json: missing" in error_line(runner.invoke(app, merge))
    monkeypatch.setenv("RANK", "1")  # torchrun / a job array's launcher: the part comes from the environment
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, base)
    assert result.exit_code == 0 and "(part 1 of 2)" in result.output, result.output
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    result = runner.invoke(app, merge)
    assert result.exit_code == 0 and "merged 2 parts: 3 shards, 10 vectors" in result.output, result.output

    result = runner.invoke(app, built)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus", str(corpus),
                                 "--index", str(tmp_path / "i1")])
    assert result.exit_code == 0, result.output
    answers = []
    for idx in ("i1", "i2"):
        result = runner.invoke(app, ["search", "--index", str(tmp_path / idx), "火车票", "医院", "-k", "5", "--json"])
        assert result.exit_code == 0, result.output
        answers.append([json.loads(line)["results"] for line in result.output.splitlines()])
    assert [[r["id"] for r in q] for q in answers[0]] == [[r["id"] for r in q] for q in answers[1]]
    assert answers[0][0][0]["id"].startswith("part-")  # ids of plain-text shards: NAME:LINE
    np.testing.assert_allclose([r["score"] for q in answers[0] for r in q],
                               [r["score"] for q in answers[1] for r in q], atol=1e-5)


def test_mistakes_are_one_line(trained_model_dir: Path, corpus: Path, tmp_path: Path):
    import deepsem

    out = tmp_path / "vectors"
    base = ["encode", "--model", str(trained_model_dir), str(corpus), "--out", str(out)]
    assert "--shard" in error_line(runner.invoke(app, [*base, "--shard", "2/2"]))
    (tmp_path / "file").write_text("x")
    assert "is a file" in error_line(runner.invoke(app, [*base[:-1], str(tmp_path / "file")]))
    assert runner.invoke(app, base).exit_code == 0
    import torch

    other = deepsem.load(trained_model_dir)  # a copy whose weights differ
    with torch.no_grad():
        next(other.model.parameters()).mul_(2.0)
    other_dir = other.save(tmp_path / "other")
    line = error_line(runner.invoke(app, ["encode", "--model", str(other_dir), str(corpus), "--out", str(out)]))
    assert "manifest.json: these vectors were made by another model" in line and "--overwrite" in line
    result = runner.invoke(app, ["encode", "--model", str(other_dir), str(corpus), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0 and "encoded 3 shards" in result.output, result.output
    line = error_line(runner.invoke(app, ["index", "build", "--model", str(trained_model_dir), "--corpus",
                                          str(corpus), "--vectors", str(out), "--index", str(tmp_path / "i")]))
    assert "made by another model" in line
    (corpus / "part-0.txt").write_text("天气\n", encoding="utf-8")
    line = error_line(runner.invoke(app, ["index", "build", "--model", str(other_dir), "--corpus", str(corpus),
                                          "--vectors", str(out), "--index", str(tmp_path / "i")]))
    assert "part-0.txt: changed since it was encoded" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(runner.invoke(app, ["encode", "--model", str(other_dir), str(empty), "--out", str(out)]))
    assert "is a folder with no corpus files" in line


def test_onnx_backend_and_precision_are_kept_apart(trained_model_dir: Path, corpus: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    base = ["encode", "--model", str(trained_model_dir), str(corpus)]
    assert runner.invoke(app, [*base, "--out", str(torch_out)]).exit_code == 0
    result = runner.invoke(app, [*base, "--out", str(onnx_out), "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read_shards(onnx_out), read_shards(torch_out), atol=1e-5)
    assert json.loads((onnx_out / "manifest.json").read_text())["model"]["backend"] == "onnx"
    line = error_line(runner.invoke(app, [*base, "--out", str(onnx_out)]))  # torch vectors into an onnx run
    assert "another model" in line and "backend 'onnx' then, 'torch' now" in line
