"""data/batches.py against plain-Python references: the text table, pair sets, length buckets, text encoding.

(tests/tasks/test_matching.py checks on a large set that length buckets cut padding; here: the exact contents.)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor

from deepsem.data.batches import (
    PairSet,
    TextTable,
    encode_texts,
    length_batches,
    list_batch_count,
    list_batches,
)
from deepsem.text import Tokenizer, build_tokenizer

TEXTS = ["银行卡", "还款", "银行卡余额不足", "a", "还款", "逾期了怎么办呢", "银行卡"]


class CountingTokenizer:
    """A char tokenizer that counts how often each text is encoded (the table must encode each text once)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.inner = build_tokenizer("char", texts)
        self.encoded: Counter[str] = Counter()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        self.encoded.update(texts)
        return self.inner.encode_batch(texts)


def make_table(texts: Sequence[str] = TEXTS) -> tuple[TextTable, CountingTokenizer]:
    tokenizer = CountingTokenizer(texts)
    return TextTable(tokenizer), tokenizer  # type: ignore[arg-type]


def test_the_table_stores_each_text_once_in_first_seen_order() -> None:
    table, tokenizer = make_table()
    rows = table.add(TEXTS)
    unique = list(dict.fromkeys(TEXTS))
    assert table.texts == unique and len(table) == len(unique)
    assert rows.tolist() == [unique.index(t) for t in TEXTS] and rows.dtype == np.int64
    assert set(tokenizer.encoded.values()) == {1}  # each distinct text tokenised once
    again = table.add(["还款", "新的文本", "银行卡"])
    assert again.tolist() == [1, len(unique), 0]
    assert tokenizer.encoded["新的文本"] == 1 and tokenizer.encoded["还款"] == 1
    assert table.add([]).tolist() == []


def test_a_batch_is_the_rows_ids_padded_to_its_longest_row() -> None:
    table, tokenizer = make_table()
    table.add(TEXTS)
    reference = tokenizer.inner.encode_batch(table.texts)
    assert table.lengths.tolist() == [len(ids) for ids in reference]
    for rows in ([0], [1, 3], [2, 0, 4], [3, 3]):
        ids, lengths = table.batch(np.asarray(rows))
        width = max(len(reference[r]) for r in rows)
        assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
        assert ids.tolist() == [reference[r] + [0] * (width - len(reference[r])) for r in rows]
        assert lengths.tolist() == [len(reference[r]) for r in rows]


def test_texts_added_after_a_batch_are_batched_too() -> None:
    table, tokenizer = make_table()
    table.add(["a"])
    assert table.batch(np.asarray([0]))[0].shape == (1, 1)
    (row,) = table.add(["逾期了怎么办呢"])
    ids, lengths = table.batch(np.asarray([0, row]))
    expected = tokenizer.inner.encode("逾期了怎么办呢")
    assert ids[1].tolist() == expected and int(lengths[1]) == len(expected) and ids.shape == (2, len(expected))


def test_pair_sets_index_the_shared_table_and_default_to_relevant() -> None:
    table, _ = make_table()
    a, b = ["银行卡", "还款", "银行卡"], ["还款", "a", "逾期了怎么办呢"]
    pairs = PairSet.from_texts(table, a, b, None)
    assert len(pairs) == 3 and len(table) == 4  # "还款" on both sides, "银行卡" twice: stored once each
    assert [table.texts[i] for i in pairs.a] == a and [table.texts[i] for i in pairs.b] == b
    assert pairs.labels.dtype == np.float32 and pairs.labels.tolist() == [1.0, 1.0, 1.0]
    graded = PairSet.from_texts(table, a, b, [1, 0, 0.5])
    assert graded.labels.tolist() == [1.0, 0.0, 0.5] and graded.labels.dtype == np.float32
    lengths = [len(table.tokenizer.encode_batch([x])[0]) for x in table.texts]
    assert pairs.lengths().tolist() == [max(lengths[i], lengths[j]) for i, j in zip(pairs.a, pairs.b, strict=True)]


def pair_set(n: int) -> PairSet:
    table, _ = make_table([f"t{i}" for i in range(n)])
    return PairSet.from_texts(table, [f"t{i}" for i in range(n)], [f"t{(i + 1) % n}" for i in range(n)], None)


@pytest.mark.parametrize(("n", "size"), [(10, 3), (9, 3), (2, 5), (1, 1), (0, 4)])
def test_pair_batches_in_order_and_shuffled(n: int, size: int) -> None:
    pairs = pair_set(n) if n else PairSet(TextTable(build_tokenizer("char", ["x"])), *(np.zeros(0),) * 3)
    in_order = [batch.tolist() for batch in pairs.batches(size)]
    assert in_order == [list(range(s, min(s + size, n))) for s in range(0, n, size)]
    shuffled = [batch.tolist() for batch in pairs.batches(size, np.random.default_rng(7))]
    permutation = np.random.default_rng(7).permutation(n).tolist()
    assert shuffled == [permutation[s : s + size] for s in range(0, n, size)]


def reference_length_batches(lengths: Sequence[int], size: int, seed: int, bucket_batches: int) -> list[list[int]]:
    """The documented recipe in plain Python: shuffle, sort each run of ``bucket_batches`` batches by length
    (stable), cut into batches, then shuffle the batches."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)).tolist()
    chunk = size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])  # sorted() is stable
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    return [batches[j] for j in rng.permutation(len(batches)).tolist()]


@pytest.mark.parametrize(("n", "size", "bucket_batches"), [(103, 8, 4), (64, 8, 2), (5, 8, 50), (40, 1, 3),
                                                           (0, 4, 2)])
def test_length_buckets_equal_the_reference_and_cover_every_row_once(n: int, size: int, bucket_batches: int) -> None:
    lengths = np.random.default_rng(n).integers(1, 20, n)
    got = [batch.tolist() for batch in length_batches(lengths, size, np.random.default_rng(3), bucket_batches)]
    assert got == reference_length_batches(lengths.tolist(), size, 3, bucket_batches)
    assert sorted(i for batch in got for i in batch) == list(range(n))
    assert len(got) == sum(math.ceil(min(size * bucket_batches, n - s) / size)
                           for s in range(0, n, size * bucket_batches))
    assert all(0 < len(batch) <= size for batch in got)
    assert all(np.all(np.diff(lengths[batch]) >= 0) for batch in got)  # a batch holds neighbours in length


@pytest.mark.parametrize(("sizes", "batch_size"), [([3, 1, 7, 2, 2, 5, 1, 9], 6), ([30, 2, 2], 8), ([1] * 10, 3),
                                                    ([4, 4], 50), ([12], 5)])
def test_list_batches_keep_each_list_whole_and_make_the_counted_batches(sizes: list[int], batch_size: int) -> None:
    groups = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # ids need not be 0..G-1
    groups = groups[np.random.default_rng(0).permutation(len(groups))]  # nor their rows adjacent
    count = list_batch_count(groups, batch_size)
    assert count == min(math.ceil(len(groups) / batch_size), len(sizes))
    orders = set()
    for seed in range(5):
        batches = list(list_batches(groups, batch_size, np.random.default_rng(seed)))
        assert len(batches) == count and all(len(b) for b in batches)  # the trainer counts on it
        rows = np.concatenate(batches)
        assert sorted(rows.tolist()) == list(range(len(groups)))  # every row once
        owner = {g: i for i, b in enumerate(batches) for g in groups[b].tolist()}
        assert all(owner[g] == i for i, b in enumerate(batches) for g in groups[b].tolist())  # lists whole
        largest = max(sizes)  # the fewest-rows batch takes the next list: no batch passes the mean by a list
        assert max(len(b) for b in batches) <= max(largest, math.ceil(len(groups) / count) + largest)
        if len(set(sizes)) == 1:  # equal lists: balanced to within one list
            assert max(len(b) for b in batches) - min(len(b) for b in batches) <= sizes[0]
        orders.add(tuple(rows.tolist()))
    assert len(orders) > 1 or len(sizes) == 1  # shuffled by the generator


def test_pair_batches_by_length_are_the_length_buckets_of_the_longer_side() -> None:
    pairs = pair_set(30)
    got = [b.tolist() for b in pairs.batches(4, np.random.default_rng(5), by_length=True)]
    assert got == [b.tolist() for b in length_batches(pairs.lengths(), 4, np.random.default_rng(5))]
    assert [b.tolist() for b in pairs.batches(4, None, by_length=True)] == [
        list(range(s, min(s + 4, 30))) for s in range(0, 30, 4)]  # no rng: in order, by_length ignored


class SumModel(torch.nn.Module):
    """A stand-in tower pair: a text's vector is (sum of its ids, length, side flag), whatever its padding."""

    config = SimpleNamespace(tower=SimpleNamespace(output_dim=3))  # what encode_texts reads of a model

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, int]] = []

    def encode(self, ids: Tensor, lengths: Tensor, side: str) -> Tensor:
        self.batches.append(tuple(ids.shape))  # type: ignore[arg-type]
        assert ids.dtype == torch.long and int(lengths.max()) == ids.shape[1]
        mask = torch.arange(ids.shape[1]) < lengths.unsqueeze(1)
        assert torch.all(ids[~mask] == 0)  # padding is 0
        flag = torch.full_like(lengths, 1 if side == "doc" else 0)
        return torch.stack([(ids * mask).sum(1), lengths, flag], dim=1).double()


@pytest.mark.parametrize("training", [True, False])
def test_encode_texts_returns_each_texts_vector_in_input_order(training: bool) -> None:
    texts = ["还款", "银行卡余额不足", "a", "逾期了怎么办呢", "银行卡", "a"]
    tokenizer: Tokenizer = build_tokenizer("char", texts)
    model = SumModel()
    model.train(training)
    out = encode_texts(model, tokenizer, texts, side="doc", batch_size=4)
    ids = tokenizer.encode_batch(texts)
    assert out.dtype == np.float32 and out.shape == (len(texts), 3)
    assert out.tolist() == [[sum(x), len(x), 1] for x in ids]
    assert model.training is training  # the caller's mode is kept
    assert [rows for rows, _ in model.batches] == [4, 2]
    assert encode_texts(model, tokenizer, texts[:1])[0].tolist() == [sum(ids[0]), len(ids[0]), 0]
    assert encode_texts(model, tokenizer, []).shape == (0, 3)
