"""``deepsem train --corpus``: a model from documents alone, with DATA, and the errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app

runner = CliRunner()
TINY = ["--embedding-dim", "16", "--hidden", "24", "--dim", "16", "--batch-size", "32", "--lr", "0.01",
        "--no-progress"]
CHARS = "银行卡账户余额还款利息逾期密码登录验证借钱额度申请天气下雨晴朗火车站车票吃饭餐厅米饭学习考试学校"


def _corpus(path: Path, n: int = 60) -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(n):
        own = rng.sample(CHARS, 5)
        text = "。".join("".join(rng.choice(own) for _ in range(6)) for _ in range(4)) + "。"
        lines.append(json.dumps({"id": f"d{i}", "title": "".join(rng.sample(own, 3)), "text": text},
                                ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_from_a_corpus_alone(tmp_path: Path):
    corpus = _corpus(tmp_path / "docs.jsonl", 40)
    out = tmp_path / "m"
    result = runner.invoke(app, ["train", "--corpus", str(corpus), "--out", str(out), "--loss", "softmax",
                                 "--ict-pairs-per-doc", "3", "--simcse-share", "0.5", "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    assert "best dev: mrr " in result.output and "mrr@10 " in result.output  # dev: the held-out documents
    info = json.loads((out / "config.json").read_text("utf-8"))["corpus"]
    assert info["options"] == {"ict_pairs_per_doc": 3, "simcse_share": 0.5}
    assert info["documents"] == 40 and info["dev_documents"] == 1
    assert info["ict_pairs"] == 3 * 39 and info["simcse_pairs"] == info["ict_pairs"]
    model = deepsem.load(out)
    assert model.encode(["银行卡余额", "天气晴朗"]).shape == (2, 16)
    # the same command again resumes the finished run (same corpus, same options, same seed): the same weights
    again = runner.invoke(app, ["train", "--corpus", str(corpus), "--out", str(out), "--loss", "softmax",
                                "--ict-pairs-per-doc", "3", "--simcse-share", "0.5", "--epochs", "1", *TINY])
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(deepsem.load(out).encode(["银行卡余额"]), model.encode(["银行卡余额"]))
    changed = runner.invoke(app, ["train", "--corpus", str(corpus), "--out", str(out), "--loss", "softmax",
                                  "--ict-pairs-per-doc", "2", "--epochs", "1", *TINY])
    assert changed.exit_code == 2 and "error:" in changed.output


def test_train_with_pairs_and_a_corpus(tmp_path: Path, pair_files):
    corpus = _corpus(tmp_path / "docs.jsonl", 20)
    out = tmp_path / "m"
    result = runner.invoke(app, ["train", str(pair_files[0]), "--dev", str(pair_files[1]), "--corpus", str(corpus),
                                 "--ict-pairs-per-doc", "1", "--out", str(out), "--max-steps", "2", *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text("utf-8"))
    assert config["train_pairs"] == 1200 + 20 and config["corpus"]["dev_documents"] == 0


def test_corpus_errors(tmp_path: Path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "m"), *TINY])
    assert result.exit_code == 2 and "give DATA (training pairs) or --corpus FILE" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    result = runner.invoke(app, ["train", "--corpus", str(empty), "--out", str(tmp_path / "m"), *TINY])
    assert result.exit_code == 2 and "empty.jsonl" in result.output and "no documents" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "一句。两句。"}\n{"id": 2, "title": "没有正文"}\n', encoding="utf-8")
    result = runner.invoke(app, ["train", "--corpus", str(bad), "--out", str(tmp_path / "m"), *TINY])
    assert result.exit_code == 2 and "bad.jsonl, line 2, field 'text'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "nope.jsonl" in result.output
    result = runner.invoke(app, ["train", "--corpus", str(bad), "--simcse-share", "1", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--simcse-share" in result.output
