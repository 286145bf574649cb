"""``deepsem recommend evaluate`` on a log with items the model never saw: the split is aligned to the model's
catalogue, the unknown test targets are reported on stderr and are never in the top k."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from deepsem.cli import app

runner = CliRunner()


def write_log(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows), encoding="utf-8")
    return path


def test_unknown_test_targets_are_reported_and_missed(tmp_path: Path) -> None:
    rows = [(f"u{u}", f"i{(u + k) % 6}", k) for u in range(8) for k in range(4)]
    log = write_log(tmp_path / "train.tsv", rows)
    out = tmp_path / "model"
    result = runner.invoke(app, ["recommend", "train", str(log), "--out", str(out), "--embedding-dim", "8",
                                 "--hidden", "8", "--dim", "8", "--epochs", "1", "--no-progress",
                                 "--no-item-features"])
    assert result.exit_code == 0, result.output
    # every user's last item (its test target) is one the model never saw
    unseen = write_log(tmp_path / "new.tsv", rows + [(f"u{u}", f"new{u}", 9) for u in range(8)])
    result = runner.invoke(app, ["recommend", "evaluate", "--model", str(out), str(unseen), "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert "8 test targets are items the model never saw" in result.output
    metrics = json.loads(result.output[result.output.index("{"):])["deepsem"]
    assert metrics["hr@3"] == 0.0 and metrics["recall@3"] == 0.0
    result = runner.invoke(app, ["recommend", "evaluate", "--model", str(out), str(log), "--k", "3"])
    assert result.exit_code == 0 and "never saw" not in result.output
