"""``--precision fp32|bf16`` (issue 16): it reaches the training settings of the three training commands, a CPU
without native bf16 is one ``error:`` line before any data is read, ``encode`` / ``evaluate`` / ``serve --model``
load the model in that precision, and the default answers exactly as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_commands import COMMANDS, fake_train, training_input
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.data import precision as precision_module
from deepsem.data.precision import bf16_supported
from deepsem.errors import ConfigError

runner = CliRunner()
FIXTURES = Path(__file__).parent.parent / "fixtures" / "model_dirs_v1"
FIXTURE_TEXTS = ["怎么还款", "如何还钱", "借款额度", "hello world", "我爱北京天安门", "good day"]
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")

def _precision_of(training: Any) -> str:
    return training["precision"] if isinstance(training, dict) else training.precision


@needs_bf16
@pytest.mark.parametrize(("command", "module", "name"), COMMANDS)
@pytest.mark.parametrize("given", [None, "fp32", "bf16"])
def test_precision_reaches_the_training_settings(command: list[str], module: str, name: str, given: str | None,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(f"{module}.{name}", fake_train(calls))
    args = [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "out"), "--no-progress"]
    result = runner.invoke(app, args + (["--precision", given] if given else []))
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and _precision_of(calls[0]["training"]) == (given or "fp32")


@pytest.mark.parametrize(("command", "module", "name"), COMMANDS)
def test_no_native_bf16_is_one_error_line_before_any_data_is_read(
        command: list[str], module: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "_cpu_bf16", lambda: False)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(f"{module}.{name}", fake_train(calls))
    monkeypatch.setattr("deepsem.data.interactions.read_interactions",
                        lambda *a, **k: pytest.fail("data read before the precision was checked"))
    result = runner.invoke(app, [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "o"), "--precision",
                                 "bf16"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == ["error: --precision bf16 on cpu: this CPU has neither AVX512-BF16 nor AMX; use --precision fp32"]
    assert not calls
    result = runner.invoke(app, [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "o"), "--precision",
                                 "fp16"])
    assert result.exit_code == 2 and "--precision" in result.output and "fp16" in result.output


def test_the_library_refuses_before_reading_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deepsem.train(..., training={"precision": "bf16"}) on such a CPU: the precision, not the missing file."""
    monkeypatch.setattr(precision_module, "_cpu_bf16", lambda: False)
    with pytest.raises(ConfigError, match="--precision bf16 on cpu"):
        deepsem.train(tmp_path / "missing.tsv", out=tmp_path / "m", training={"precision": "bf16"})
    with pytest.raises(ConfigError, match="--precision bf16 on cpu"):
        deepsem.train_classifier(tmp_path / "missing.tsv", out=tmp_path / "c", training={"precision": "bf16"})
    with pytest.raises(ConfigError, match="--precision bf16 on cpu"):
        deepsem.train_recommender(tmp_path / "missing.tsv", out=tmp_path / "r", training={"precision": "bf16"})


@needs_bf16
def test_encode_and_evaluate_with_precision(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(FIXTURE_TEXTS) + "\n", encoding="utf-8")
    model = str(FIXTURES / "two_tower")
    for precision in (None, "fp32", "bf16"):
        extra = ["--precision", precision] if precision else []
        result = runner.invoke(app, ["encode", "--model", model, str(texts), "--out", str(tmp_path / "v.npy"), *extra])
        assert result.exit_code == 0, result.output
        vectors = np.load(tmp_path / "v.npy")
        assert vectors.dtype == np.float32
        expected = np.load(FIXTURES / "two_tower_expected.npy")
        if precision == "bf16":
            cosines = (vectors * expected).sum(-1)
            assert cosines.min() >= 0.9995 and not np.array_equal(vectors, deepsem.load(model).encode(FIXTURE_TEXTS))
        else:  # the default: exactly what the library gives, as before
            np.testing.assert_array_equal(vectors, deepsem.load(model).encode(FIXTURE_TEXTS))
            np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("怎么还款\t如何还钱\t1\n借款额度\thello world\t0\n我爱北京天安门\tgood day\t0\n", encoding="utf-8")
    got = {}
    for precision in ("fp32", "bf16"):
        result = runner.invoke(app, ["evaluate", "--model", model, str(pairs), "--json", "--precision", precision])
        assert result.exit_code == 0, result.output
        got[precision] = json.loads(result.output)
    assert got["bf16"]["roc_auc"] == pytest.approx(got["fp32"]["roc_auc"], abs=0.01)


@needs_bf16
def test_serve_loads_the_model_in_that_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepsem.serve

    seen: dict[str, Any] = {}

    def fake_create_app(index: Any, semantic: Any, *args: Any, **kwargs: Any) -> str:
        seen.update(semantic=semantic, classifier=kwargs.get("classifier"))
        return "app"

    monkeypatch.setattr(deepsem.serve, "create_app", fake_create_app)
    monkeypatch.setattr(deepsem.serve, "run", lambda *a, **k: None)
    result = runner.invoke(app, ["serve", "--model", str(FIXTURES / "two_tower"), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert seen["semantic"].precision == "bf16"
    result = runner.invoke(app, ["serve", "--model", str(FIXTURES / "classifier"), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert seen["classifier"].precision == "bf16"
    result = runner.invoke(app, ["serve", "--model", str(FIXTURES / "two_tower")])
    assert result.exit_code == 0 and seen["semantic"].precision == "fp32"
    result = runner.invoke(app, ["serve", "--model", str(FIXTURES / "two_tower"), "--precision", "bf16",
                                 "--backend", "onnx"])
    assert result.exit_code != 0 and "onnx runs fp32" in result.output


@needs_bf16
def test_an_index_opens_in_bf16_and_keeps_it(tmp_path: Path) -> None:
    from deepsem.index import Document, Index

    Index.build(FIXTURES / "two_tower", ["怎么还款", "信用卡", "借呗额度"], tmp_path / "idx")
    index = Index.load(tmp_path / "idx", precision="bf16")
    assert index.model.precision == "bf16" and index.load_options["precision"] == "bf16"
    index.add([Document("new", "新的文档")])  # reopens the new version
    assert index.model.precision == "bf16"
    result = runner.invoke(app, ["search", "--index", str(tmp_path / "idx"), "--precision", "bf16", "--json", "还款"])
    assert result.exit_code == 0, result.output
