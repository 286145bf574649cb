"""Training with hard negatives: the batches carry the mined documents, resume refuses another file, re-mining runs
every N epochs (and a resumed run reads what the broken run mined), and what is refused up front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_pairs, write_tsv

import deepsem
from deepsem.data.hard_negatives import (
    HardNegatives,
    MiningSettings,
    Negative,
    QueryNegatives,
    read_hard_negatives,
    write_hard_negatives,
)
from deepsem.errors import ConfigError, ResumeMismatchError
from deepsem.tasks import matching
from deepsem.text import build_tokenizer

TINY_MODEL = {"tower": {"embedding_dim": 8, "hidden_size": 8, "output_dim": 8}}
TINY = {"batch_size": 16, "lr": 1e-2, "checkpoint_every": 1000, "negatives": "hard", "num_negatives": 2}


def _mined_file(path: Path, rows: list[tuple[str, str, int]], docs_per_query: int = 3, skip: int = 2,
                settings: MiningSettings | None = None) -> tuple[Path, dict[str, list[str]]]:
    """A negatives file for every ``skip``-th positive query: documents of other pairs, chosen by position."""
    docs = list(dict.fromkeys(b for _, b, _ in rows))
    queries = list(dict.fromkeys(a for a, _, y in rows if y))
    mined: dict[str, list[str]] = {}
    for i, q in enumerate(queries[::skip]):
        own = {b for a, b, y in rows if a == q and y}
        around = [docs[(i * 3 + k) % len(docs)] for k in range(3 * docs_per_query)]
        mined[q] = [d for d in around if d not in own and d != q][:docs_per_query]
    hard = HardNegatives([QueryNegatives(q, [], [Negative(t, "dense", k + 1, 0.5) for k, t in enumerate(texts)])
                          for q, texts in mined.items()], "dense", settings or MiningSettings(per_query=3, depth=10))
    return write_hard_negatives(path, hard), mined


class Planned(Exception):
    """Raised by the stand-in run_training once it has the plan."""


def _plan(monkeypatch: pytest.MonkeyPatch, train: Path, out: Path, **kwargs: Any) -> Any:
    """train()'s TrainingPlan, built with a char tokenizer of the data, without training."""
    box: dict[str, Any] = {}

    def fake_run_training(cfg, out_dir, fingerprint, build, *, texts, **kw):
        box["tokenizer"] = build_tokenizer("char", iter(texts()))
        box["plan"], box["fingerprint"] = build(box["tokenizer"]), fingerprint
        raise Planned

    monkeypatch.setattr(matching, "run_training", fake_run_training)
    with pytest.raises(Planned):
        matching.train(train, out, model=TINY_MODEL, training=kwargs.pop("training", TINY), progress=False,
                       **kwargs)
    monkeypatch.undo()
    return box


def test_each_query_s_sampled_negatives_are_its_mined_documents(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_pairs(120, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    negatives, mined = _mined_file(tmp_path / "neg.jsonl", rows)
    box = _plan(monkeypatch, train, tmp_path / "m", hard_negatives=negatives)
    plan, tok = box["plan"], box["tokenizer"]
    texts = plan.collate.table.texts
    seen_mined, seen_random = 0, 0
    for idx in plan.batches(0, np.random.default_rng(0)):
        batch = plan.collate(idx)
        positive = batch["positive"].numpy()
        queries = [texts[r] for r in batch["q_rows"].numpy()[positive]]
        sampled = batch["s_ids"].numpy().reshape(len(positive), 2, -1)
        lengths = batch["s_len"].numpy().reshape(len(positive), 2)
        for q, ids, n in zip(queries, sampled, lengths, strict=True):
            got = [list(ids[k, : n[k]]) for k in range(2)]
            if q in mined:
                allowed = [list(tok.encode(t)) for t in mined[q]]
                assert all(g in allowed for g in got)
                seen_mined += 1
            else:
                seen_random += 1
    assert seen_mined > 10 and seen_random > 10  # queries without mined negatives get random ones
    assert all(len(texts) == 3 for texts in mined.values())


def test_the_fingerprint_holds_the_file_and_old_runs_keep_theirs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_pairs(40, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    negatives, _ = _mined_file(tmp_path / "neg.jsonl", rows)
    plain = _plan(monkeypatch, train, tmp_path / "a", training={"batch_size": 16})["fingerprint"]
    assert "hard_negatives" not in plain["task"] and "remine_every" not in plain["training"]
    hard = _plan(monkeypatch, train, tmp_path / "b", hard_negatives=negatives)["fingerprint"]
    assert len(hard["task"]["hard_negatives"]) == 64
    assert "remine_every" not in deepsem.TrainConfig().to_dict()


def test_resume_refuses_a_changed_negatives_file(tmp_path: Path) -> None:
    rows = make_pairs(48, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    negatives, _ = _mined_file(tmp_path / "neg.jsonl", rows)
    out = tmp_path / "m"
    training = {**TINY, "max_steps": 2, "epochs": 1}
    deepsem.train(train, out, model=TINY_MODEL, training=training, hard_negatives=negatives, progress=False)
    _mined_file(negatives, rows, docs_per_query=2)  # other negatives, same path
    with pytest.raises(ResumeMismatchError, match="hard_negatives"):
        deepsem.train(train, out, model=TINY_MODEL, training={**training, "max_steps": 3}, hard_negatives=negatives,
                      progress=False)


def test_re_mining_runs_every_n_epochs_and_a_resumed_run_reads_what_was_mined(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_pairs(60, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    negatives, _ = _mined_file(tmp_path / "neg.jsonl", rows, settings=MiningSettings(per_query=2, depth=6))
    calls: list[tuple[int, MiningSettings, str]] = []
    real = matching.mine_negatives

    def counting(queries, docs, positives, settings, **kw):
        calls.append((len(queries), settings, kw["source"]))
        return real(queries, docs, positives, settings, **kw)

    monkeypatch.setattr(matching, "mine_negatives", counting)
    out = tmp_path / "m"
    training = {**TINY, "epochs": 5, "remine_every": 2}
    box_plan = _plan(monkeypatch, train, out, training=training, hard_negatives=negatives)["plan"]
    monkeypatch.setattr(matching, "mine_negatives", counting)
    own = []
    for epoch in range(5):
        box_plan.batches(epoch, np.random.default_rng(epoch))
        own.append(box_plan.collate.own)
    cache = out / "training" / "hard-negatives"
    assert len(calls) == 2 and all(c[1] == MiningSettings(per_query=2, depth=6) and c[2] == "dense" for c in calls)
    assert sorted(p.name for p in cache.iterdir()) == ["epoch-2.jsonl", "epoch-4.jsonl"]
    assert own[0] is own[1] and own[2] is own[3] and own[1] is not own[2]
    texts = box_plan.collate.table.texts
    remined = read_hard_negatives(cache / "epoch-2.jsonl").by_query()
    assert {texts[q]: sorted(texts[d] for d in docs) for q, docs in own[2].items()} == {
        q: sorted(set(d)) for q, d in remined.items() if d}

    # a resumed run (a checkpoint is there) reads the re-mined files instead of mining again
    monkeypatch.setattr(matching, "find_checkpoint", lambda run_dir: run_dir / "checkpoint")
    resumed = _plan(monkeypatch, train, out, training=training, hard_negatives=negatives)["plan"]
    monkeypatch.setattr(matching, "mine_negatives", counting)
    resumed.batches(3, np.random.default_rng(3))
    assert len(calls) == 2 and resumed.collate.own.keys() == own[3].keys()
    # a fresh run (no checkpoint) forgets them
    _plan(monkeypatch, train, out, training=training, hard_negatives=negatives)
    assert not cache.exists()


def _as_tuples(mined: HardNegatives) -> list[tuple[str, list[tuple[str, str, int]]]]:
    return [(r.query, [(n.text, n.source, n.rank) for n in r.negatives]) for r in mined.rows]


def test_re_mining_draws_from_the_file_s_sources_and_ranks_bm25_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_pairs(60, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    settings = MiningSettings(per_query=3, depth=8, margin=0.0)
    path, _ = _mined_file(tmp_path / "neg.jsonl", rows, settings=settings)
    mined = read_hard_negatives(path)
    mined.source = "both"  # as `deepsem negatives mine --source both` writes it
    write_hard_negatives(path, mined)
    out = tmp_path / "m"
    plan = _plan(monkeypatch, train, out, training={**TINY, "epochs": 3, "remine_every": 1},
                 hard_negatives=path)["plan"]
    real_mine, real_ranking = matching.mine_negatives, matching.bm25_ranking
    calls: list[tuple[Any, ...]] = []
    built: list[list[str]] = []
    ranked: list[int] = []

    def recording(queries, docs, positives, settings, **kw):
        calls.append((queries, docs, positives, settings, kw))
        return real_mine(queries, docs, positives, settings, **kw)

    def counting_ranking(docs):
        built.append(list(docs))
        rank = real_ranking(docs)

        def counted(queries, n):
            ranked.append(len(queries))
            return rank(queries, n)
        return counted

    monkeypatch.setattr(matching, "mine_negatives", recording)
    monkeypatch.setattr(matching, "bm25_ranking", counting_ranking)
    for epoch in range(3):
        plan.batches(epoch, np.random.default_rng(epoch))
    assert len(calls) == 2 and all(c[4]["source"] == "both" and c[3] == settings for c in calls)
    assert len(built) == 1 and len(ranked) == 1  # one BM25 index, one ranking, for both re-minings

    # what each re-mining wrote is what mining from scratch (a fresh BM25 index) gives with the same model
    queries, docs, positives, _, kw = calls[1]
    reference = real_mine(queries, docs, positives, settings, source="both", lexical=real_ranking(docs),
                          encode=kw["encode"])
    for epoch in (1, 2):
        saved = read_hard_negatives(out / "training" / "hard-negatives" / f"epoch-{epoch}.jsonl")
        assert saved.source == "both" and _as_tuples(saved) == _as_tuples(reference)
    assert any(n.source == "bm25" for r in reference.rows for n in r.negatives)


def test_a_file_without_a_header_re_mines_dense(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_pairs(40, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    _, mined = _mined_file(tmp_path / "neg.jsonl", rows)
    bare = tmp_path / "bare.jsonl"  # another tool's file: no header, negatives as plain strings
    bare.write_text("".join(json.dumps({"query": q, "negatives": d}, ensure_ascii=False) + "\n"
                            for q, d in mined.items()), encoding="utf-8")
    plan = _plan(monkeypatch, train, tmp_path / "m", training={**TINY, "epochs": 2, "remine_every": 1},
                 hard_negatives=bare)["plan"]
    sources: list[tuple[str, Any]] = []
    real_mine = matching.mine_negatives

    def recording(queries, docs, positives, settings, **kw):
        sources.append((kw["source"], kw["lexical"]))
        return real_mine(queries, docs, positives, settings, **kw)

    monkeypatch.setattr(matching, "mine_negatives", recording)
    plan.batches(1, np.random.default_rng(1))
    assert sources == [("dense", None)]


def test_a_real_run_re_mines_with_the_model_it_trains(tmp_path: Path) -> None:
    rows = make_pairs(48, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    negatives, _ = _mined_file(tmp_path / "neg.jsonl", rows, settings=MiningSettings(per_query=2, depth=8))
    out = tmp_path / "m"
    _, result = deepsem.train(train, out, model=TINY_MODEL, training={**TINY, "epochs": 2, "remine_every": 1},
                              hard_negatives=negatives, progress=False)
    assert result.steps == 2 * 3
    remined = read_hard_negatives(out / "training" / "hard-negatives" / "epoch-1.jsonl")
    assert remined.source == "dense" and sum(len(r.negatives) for r in remined.rows) > 0


def test_what_is_refused(tmp_path: Path) -> None:
    rows = make_pairs(20, 1)
    train = write_tsv(tmp_path / "train.tsv", rows)
    negatives, _ = _mined_file(tmp_path / "neg.jsonl", rows)
    with pytest.raises(ValueError, match="needs hard_negatives"):
        deepsem.train(train, tmp_path / "m", training=TINY)
    with pytest.raises(ValueError, match="used with negatives='hard'"):
        deepsem.train(train, tmp_path / "m", training={"negatives": "random"}, hard_negatives=negatives)
    with pytest.raises(ValueError, match="needs a loss over negatives"):
        deepsem.train(train, tmp_path / "m", training={**TINY, "loss": "pointwise"}, hard_negatives=negatives)
    with pytest.raises(ConfigError, match="needs negatives='hard'"):
        deepsem.train(train, tmp_path / "m", training={"remine_every": 1})
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tsv(shards / "a.tsv", rows)
    with pytest.raises(ValueError, match="needs it in memory"):
        deepsem.train(shards, tmp_path / "m", training=TINY, hard_negatives=negatives)


def test_mined_documents_encoded_by_length_groups_give_the_vectors_of_one_call() -> None:
    import torch

    from deepsem.config import ModelConfig, TrainConfig
    from deepsem.losses import MatchingLoss
    from deepsem.models import TwoTowerModel

    torch.manual_seed(0)
    config = ModelConfig.from_dict({"tower": {**TINY_MODEL["tower"], "vocab_size": 30}}, "model")
    net = TwoTowerModel(config).eval()
    lengths = torch.tensor([3, 17, 1, 9, 12, 2, 5, 17, 8, 4, 6, 11])
    ids = torch.randint(1, 30, (len(lengths), 17)) * (torch.arange(17)[None, :] < lengths[:, None])
    grouped = MatchingLoss(net, TrainConfig(negatives="hard"))._encode_sampled({"s_ids": ids, "s_len": lengths})
    whole = net.encode(ids, lengths, "doc")
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    grouped.sum().backward()
    assert net.query_tower.embedding.weight.grad is not None
