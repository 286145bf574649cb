"""`deepsem demo --no-serve` end to end: the README's first command, with its quality checked."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.index import Index
from deepsem.tools.demo import load_tatoeba, run_demo, split_pairs


def test_shipped_tatoeba_and_the_split():
    en, zh, attribution = load_tatoeba()
    assert len(en) == len(zh) == 29_155
    assert all(a.startswith("CC-BY 2.0 (France) Attribution: tatoeba.org") for a in attribution)
    train, dev = split_pairs(en, zh)
    assert len(dev.text_a) >= 900
    assert not set(dev.text_a) & set(train.text_a) and not set(dev.text_b) & set(train.text_b)


def test_demo_trains_indexes_and_answers(tmp_path: Path):
    # a fixed number of epochs (not the demo's time budget) keeps the test independent of machine load
    _, index_dir, scores = run_demo(out=tmp_path, minutes=None, epochs=2, progress=False)
    # held-out translations found among ~1,000 candidates: far above chance (0.001)
    assert scores["en2zh_recall@1"] > 0.5 and scores["zh2en_recall@1"] > 0.5
    index = Index.load(index_dir)
    assert len(index) > 50_000
    hits = index.search(["I am very hungry.", "这个多少钱？"], k=5)
    assert "我很饿。" in [h.text for h in hits[0]]
    assert any("多少钱" in h.text for h in hits[1])
    assert {h.metadata["lang"] for hits_ in hits for h in hits_} == {"en", "zh"}
    assert (tmp_path / "model" / "config.json").exists()


def test_demo_command_help():
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--no-serve" in result.output and "--out" in result.output
