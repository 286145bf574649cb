"""Streamed training pairs (deepsem.data.stream): the per-rank split, the shuffle buffer's bound, one pass per epoch,
determinism, the vocabulary, the click rule and the errors, each against the in-memory readers as the reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from deepsem.data.batches import PairCollate, PairSet, TextTable
from deepsem.data.errors import DataError
from deepsem.data.pairs import as_pairs
from deepsem.data.readers import read_clicks
from deepsem.data.stream import (
    PairBatch,
    PairStream,
    StreamCollate,
    TokenCache,
    _cut,
    _shuffled_windows,
    background,
    count_rows,
    find_shards,
    is_sharded,
    rank_part,
    shard_fingerprint,
)
from deepsem.text import build_tokenizer


def _rows(n: int, offset: int = 0) -> list[tuple[str, str, float]]:
    """Unique pairs of varied lengths, a third of them labelled 0."""
    return [(f"问{i + offset}" + "长" * ((i * 7) % 13), f"答{i + offset}" + "文" * ((i * 5) % 11), float(i % 3 != 0))
            for i in range(n)]


def _write(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"a": [r[0] for r in rows], "b": [r[1] for r in rows],
                                 "y": [int(r[2]) for r in rows]}), path)
    else:
        path.write_text("".join(f"{a}\t{b}\t{int(y)}\n" for a, b, y in rows), encoding="utf-8")
    return path


def _shards(folder: Path, sizes: list[int]) -> tuple[list[Path], list[tuple[str, str, float]]]:
    """Shards of the given sizes, alternating Parquet and TSV; all their rows in shard order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, everything = [], []
    offset = 0
    for k, n in enumerate(sizes):
        rows = _rows(n, offset)
        offset += n
        paths.append(_write(folder / f"part-{k:03d}.{'parquet' if k % 2 == 0 else 'tsv'}", rows))
        everything += rows
    return paths, everything


def _batched_rows(stream: PairStream, **kw) -> list[tuple[str, str, float]]:
    return [(a, b, float(y)) for batch in stream.batches(**kw)
            for a, b, y in zip(batch.text_a, batch.text_b, batch.labels.tolist(), strict=True)]


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_parts_are_disjoint_and_cover_every_row(tmp_path: Path, n_shards: int, world: int):
    paths, everything = _shards(tmp_path, [7 + k for k in range(n_shards)])
    stream = PairStream(paths)
    parts = []
    for rank in range(world):
        indices, by_row = rank_part(n_shards, rank, world)
        assert by_row == (n_shards < world)
        parts.append(list(stream.rows(indices, rank, world, by_row)))
    seen = Counter(row for part in parts for row in part)
    assert seen == Counter(everything)  # every row once: none twice (disjoint), none missing (complete)
    for rank in range(world):  # and the row counts each rank plans with match what it reads
        assert stream.rank_rows(rank, world) == len(parts[rank])


def test_an_epoch_yields_every_row_exactly_once(tmp_path: Path):
    paths, everything = _shards(tmp_path, [130, 75, 96])
    stream = PairStream(paths)
    steps = stream.steps_per_epoch(16)
    assert steps == -(-len(everything) // 16)
    got = _batched_rows(stream, epoch=0, batch_size=16, seed=3, steps=steps, shuffle_buffer=64)
    assert Counter(got) == Counter(everything)
    assert got != everything  # shuffled, not the files' order


def test_every_rank_runs_the_same_steps_from_its_own_rows(tmp_path: Path):
    paths, _ = _shards(tmp_path, [50, 20, 41])
    stream = PairStream(paths)
    steps = stream.steps_per_epoch(8, world=2)
    assert steps == min(-(-stream.rank_rows(r, 2) // 8) for r in range(2))
    union: Counter = Counter()
    for rank in range(2):
        batches = list(stream.batches(0, batch_size=8, seed=1, steps=steps, rank=rank, world=2, shuffle_buffer=40))
        assert len(batches) == steps
        rows = [(a, b) for bt in batches for a, b in zip(bt.text_a, bt.text_b, strict=True)]
        indices, by_row = rank_part(3, rank, 2)
        own = {(a, b) for a, b, _ in stream.rows(indices, rank, 2, by_row)}
        assert set(rows) <= own and len(rows) == len(set(rows))  # its own part, no row twice in an epoch
        union.update(rows)
    assert max(union.values()) == 1


def test_a_rank_short_of_rows_reads_its_part_again_to_make_up_the_steps(tmp_path: Path):
    paths, everything = _shards(tmp_path, [10])
    batches = list(PairStream(paths).batches(0, batch_size=4, seed=0, steps=7, shuffle_buffer=8))
    assert len(batches) == 7
    assert {(a, b) for bt in batches for a, b in zip(bt.text_a, bt.text_b, strict=True)} == \
        {(a, b) for a, b, _ in everything}


def test_the_shuffle_buffer_never_holds_more_than_its_size(tmp_path: Path):
    rows = _rows(5000)
    pulled = 0

    def counted():
        nonlocal pulled
        for row in rows:
            pulled += 1
            yield row

    emitted, most = 0, 0
    stats = {"held": 0}
    rng = np.random.default_rng(0)
    windows = _shuffled_windows(counted(), rng, window=128, capacity=300 - 128, stats=stats)
    for batch in (b for part in windows for b in _cut(part, rng, 32, True)):
        most = max(most, pulled - emitted)  # read from the source and not yet handed out, this batch included
        emitted += len(batch)
    assert emitted == len(rows)
    assert most <= 300 and stats["held"] <= 300
    assert most > 200  # the buffer was used, not bypassed


def test_the_stream_is_a_function_of_seed_epoch_rank_and_world(tmp_path: Path):
    paths, _ = _shards(tmp_path, [60, 60, 60])
    stream = PairStream(paths)
    kw = {"batch_size": 8, "steps": 10, "shuffle_buffer": 32, "world": 2}
    first = _batched_rows(stream, epoch=1, seed=5, rank=1, **kw)
    assert _batched_rows(PairStream(paths), epoch=1, seed=5, rank=1, **kw) == first
    assert _batched_rows(stream, epoch=2, seed=5, rank=1, **kw) != first
    assert _batched_rows(stream, epoch=1, seed=6, rank=1, **kw) != first


def test_length_buckets_batch_pairs_of_similar_length(tmp_path: Path):
    paths, _ = _shards(tmp_path, [800])
    stream = PairStream(paths)

    def spread(by_length: bool) -> float:
        batches = stream.batches(0, batch_size=16, seed=2, steps=50, shuffle_buffer=400, by_length=by_length)
        return float(np.mean([np.ptp([max(len(a), len(b)) for a, b in zip(bt.text_a, bt.text_b, strict=True)])
                              for bt in batches]))

    assert spread(True) < spread(False) / 3


def test_vocabulary_from_the_stream_equals_the_in_memory_one(tmp_path: Path):
    paths, everything = _shards(tmp_path / "s", [40, 33, 20])
    whole = _write(tmp_path / "all.tsv", everything)
    pairs = as_pairs(whole, binary=True)
    for limit in (None, 50):
        n = len(pairs.text_a) if limit is None else limit
        reference = build_tokenizer("char", iter(pairs.text_a[:n] + pairs.text_b[:n]))
        streamed = build_tokenizer("char", PairStream(paths).texts(limit))
        assert streamed.vocab.tokens == reference.vocab.tokens


def test_streamed_pre_aggregated_clicks_follow_the_in_memory_rule(tmp_path: Path):
    log = tmp_path / "clicks.tsv"
    rows = [("q1", "d1", 3, 10), ("q1", "d2", 0, 4), ("q2", "d1", 1, 1), ("q2", "d3", 0, 0), ("q3", "d4", 2, 9),
            ("q3", "d5", 0, 7)]
    log.write_text("query\tdoc\tclicks\timpressions\n" + "".join(f"{q}\t{d}\t{c}\t{i}\n" for q, d, c, i in rows))
    for impressions in ("impressions", None):
        reference = as_pairs(log, ("query", "doc", "clicks"), clicks=True, impressions=impressions)
        stream = PairStream([log], columns=("query", "doc", "clicks"), clicks=True, impressions=impressions)
        got = list(stream.rows())
        assert [(a, b) for a, b, _ in got] == list(zip(reference.text_a, reference.text_b, strict=True))
        labels = np.ones(len(got)) if reference.labels is None else reference.labels
        assert [y for _, _, y in got] == labels.tolist()
        assert stream.labelled == (reference.labels is not None)
    assert len(read_clicks(log, query="query", doc="doc", clicks="clicks")) == len(rows)  # one row per pair


def test_collate_matches_the_in_memory_collate(tmp_path: Path):
    batch = PairBatch(["甲乙", "丙", "甲乙", "丁戊己"], ["一", "二三", "四", "一"],
                      np.array([1, 1, 0, 1], np.float32))
    tok = build_tokenizer("char", iter(batch.text_a + batch.text_b))
    mine = StreamCollate(tok, np.random.default_rng(0))(batch)
    table = TextTable(tok)
    pairs = PairSet.from_texts(table, batch.text_a, batch.text_b, batch.labels)
    ref = PairCollate(table, pairs, np.random.default_rng(0))(np.arange(4))
    for key in ("q_ids", "q_len", "d_ids", "d_len", "labels", "positive", "same", "same_q"):
        assert torch.equal(mine[key], ref[key]), key


def test_sampled_negatives_come_from_the_pool_and_flag_clashes():
    batch = PairBatch(["a", "b"], ["x", "y"], np.array([1, 1], np.float32), pool=["x", "z"])
    tok = build_tokenizer("char", iter(["a", "b", "x", "y", "z"]))
    out = StreamCollate(tok, np.random.default_rng(0), num_negatives=6)(batch)
    assert out["s_ids"].shape == (12, 1)
    drawn = out["s_ids"].view(2, 6)
    assert set(drawn.unique().tolist()) <= {tok.encode("x")[0], tok.encode("z")[0]}
    # a drawn "x" is the first pair's own positive (masked); never the second's, whose positive "y" is not in the pool
    assert torch.equal(out["clash"][0], drawn[0] == tok.encode("x")[0]) and not out["clash"][1].any()
    assert out["clash"][0].any() and not out["clash"][0].all()


def test_shard_discovery_and_its_errors(tmp_path: Path):
    paths, _ = _shards(tmp_path / "d", [3, 3, 3])
    (tmp_path / "d" / ".hidden.tsv").write_text("x\ty\t1\n")
    (tmp_path / "d" / "notes.md").write_text("not data")
    assert find_shards(tmp_path / "d") == paths
    assert find_shards(str(tmp_path / "d" / "*.parquet")) == [p for p in paths if p.suffix == ".parquet"]
    assert is_sharded(tmp_path / "d") and is_sharded(str(tmp_path / "d" / "*.tsv"))
    assert not is_sharded(paths[1])
    with pytest.raises(DataError, match="matches no file"):
        find_shards(str(tmp_path / "d" / "*.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable shards"):
        find_shards(tmp_path / "empty")


def test_a_malformed_row_names_its_file_line_and_field_or_is_skipped_and_counted(tmp_path: Path):
    paths, everything = _shards(tmp_path, [4, 4])
    with paths[1].open("a") as fh:
        fh.write("好\t坏\tabc\n")
    with pytest.raises(DataError, match=r"part-001.tsv, line 5, field 'label'"):
        list(PairStream(paths).rows())
    stream = PairStream(paths, skip_bad_rows=True)
    assert list(stream.rows()) == everything and stream.report.count == 1


def test_row_counts_and_the_fingerprint(tmp_path: Path):
    paths, _ = _shards(tmp_path, [12, 9])
    assert [count_rows(p) for p in paths] == [12, 9]
    first = shard_fingerprint(paths, tmp_path)
    assert [f[0] for f in first] == ["part-000.parquet", "part-001.tsv"]
    assert shard_fingerprint(paths, tmp_path) == first
    _write(paths[1], _rows(9, 100))  # same size, other texts
    assert shard_fingerprint(paths, tmp_path)[1][2] != first[1][2]


def test_prefetching_and_token_cache_change_nothing_but_when_batches_are_made(tmp_path: Path):
    paths, _ = _shards(tmp_path, [90, 70])
    stream = PairStream(paths)
    tok = build_tokenizer("char", stream.texts())
    kw = {"batch_size": 16, "seed": 4, "steps": 12, "shuffle_buffer": 48}
    plain = list(stream.batches(1, **kw))
    ahead = list(stream.batches(1, prepare=TokenCache(tok, size=20), prefetch=3, **kw))
    assert [(b.text_a, b.text_b, b.labels.tolist()) for b in ahead] == \
        [(b.text_a, b.text_b, b.labels.tolist()) for b in plain]
    for b in ahead:  # the cache (forgotten every 20 texts here) gives the tokenizer's own ids
        assert b.ids_a == tok.encode_batch(b.text_a) and b.ids_b == tok.encode_batch(b.text_b)
    collate = StreamCollate(tok, np.random.default_rng(0))
    for p, a in zip(plain, ahead, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(collate(p).values(), collate(a).values(), strict=True))


def test_the_background_thread_hands_over_errors_and_stops_when_closed():
    def failing():
        yield 1
        raise DataError("x.tsv", 3, "label", "bad")

    with pytest.raises(DataError, match="line 3"):
        list(background(failing(), 2))
    made = []

    def endless():
        n = 0
        while True:
            made.append(n)
            yield n
            n += 1

    it = background(endless(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the thread, blocked on the full queue, sees the stop and ends (close waits for it)
    import threading

    assert not any(t.name == "deepsem-stream" and t.is_alive() for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 1  # never more than the queue's depth ahead (and one waiting to go in)


def test_tokenised_windows_sort_by_token_count_and_carry_the_tokenizers_ids(tmp_path: Path):
    """Latin words are one token each, CJK characters one each: character counts mis-sort such a mix, token counts
    (what a batch is padded to) do not; the batches still hold every row once, with the tokenizer's own ids."""
    rows = [(("word " * (i % 9 + 1)).strip() if i % 2 else "字" * (i % 9 + 1), "答" * (i % 5 + 1), 1.0)
            for i in range(640)]
    path = _write(tmp_path / "mixed.tsv", rows)
    stream = PairStream([path])
    tok = build_tokenizer("char", stream.texts())
    kw = {"batch_size": 32, "seed": 3, "steps": 20, "shuffle_buffer": 640}

    def token_spread(batches: list) -> float:
        return float(np.mean([np.ptp([max(len(a), len(b)) for a, b in zip(tok.encode_batch(bt.text_a),
                                                                          tok.encode_batch(bt.text_b), strict=True)])
                              for bt in batches]))

    by_chars = list(stream.batches(0, **kw))
    by_tokens = list(stream.batches(0, tokens=TokenCache(tok, size=50), **kw))
    # the same window sorted by token count only mixes two neighbouring lengths where a group ends
    assert token_spread(by_tokens) <= 1 and token_spread(by_chars) > 3 * token_spread(by_tokens)
    assert sorted(r for b in by_tokens for r in zip(b.text_a, b.text_b, strict=True)) == \
        sorted(r for b in by_chars for r in zip(b.text_a, b.text_b, strict=True))
    for b in by_tokens:
        assert b.ids_a == tok.encode_batch(b.text_a) and b.ids_b == tok.encode_batch(b.text_b)
