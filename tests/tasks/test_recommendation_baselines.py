"""evaluate_baselines (what `deepsem recommend evaluate --baselines` reports): the most-popular baseline's
HR@10 against a plain-Python count of the hits, and the Item2Vec baseline on the same split."""

from __future__ import annotations

import numpy as np

from deepsem.data.interactions import Interactions, split_sequences
from deepsem.tasks.recommendation import evaluate_baselines


def _log(n_users: int = 40, n_items: int = 25, length: int = 8, seed: int = 3) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        for t in range(length):
            users.append(u)
            items.append(int(min(rng.zipf(1.6), n_items) - 1))
            times.append(float(t))
    order = np.lexsort((np.arange(len(users)), times, users))
    return Interactions([f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(n_items)],
                        np.asarray(users, np.int32)[order], np.asarray(items, np.int32)[order],
                        np.asarray(times)[order], np.full(len(users), np.nan, np.float32),
                        np.arange(len(users))[order])


def test_most_popular_hits_match_a_plain_count() -> None:
    split = split_sequences(_log(), n_test=1, n_valid=1)
    results = evaluate_baselines(split, "test", (10,))
    assert set(results) == {"most-popular", "item2vec"}
    counts = split.train_counts()
    ranking = sorted(range(len(counts)), key=lambda i: (-counts[i], i))  # ties: smaller position first
    users, histories, targets = split.examples("test")
    hits = 0
    for history, target in zip(histories, targets, strict=True):
        seen = set(history.tolist())
        top = [i for i in ranking if i not in seen][:10]
        hits += int(target[0]) in top
    assert results["most-popular"]["hr@10"] == hits / len(users)
    assert 0.0 <= results["item2vec"]["hr@10"] <= 1.0
