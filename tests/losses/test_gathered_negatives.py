"""In-batch negatives gathered across ranks (``MatchingLoss`` under a gloo group of two processes, one thread
each) against the single-process loss of the same global batch: the logits matrix, the loss, the gradients after
DDP's average, and the first steps of AdamW; with gathering off each rank sees its local batch only."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from deepsem.config import ModelConfig, TrainConfig
from deepsem.losses import MatchingLoss
from deepsem.models import TwoTowerModel

TOWER = {"vocab_size": 30, "embedding_dim": 8, "hidden_size": 6, "output_dim": 8, "dropout": 0.0,
         "embedding_dropout": 0.0}
RTOL = 1e-5  # float32 sums taken in another order (the rank split): agreement to about 1e-6 relative is expected
WORLD = 2


def _table(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, size=rows)
    ids = rng.integers(1, 30, size=(rows, 5)) * (np.arange(5)[None, :] < lengths[:, None])
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64))


# 6 documents: batches repeat some (false negatives); two of them have the same token ids but are other rows
Q_TABLE, D_TABLE = _table(10, 0), _table(6, 1)


def _batch(a: np.ndarray, b: np.ndarray, labels: np.ndarray, s: np.ndarray | None) -> dict[str, torch.Tensor]:
    """What ``PairCollate`` builds for pairs (query row ``a``, document row ``b``) with sampled documents ``s``."""
    def rows(table: tuple[torch.Tensor, torch.Tensor], r: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(table[1][torch.from_numpy(r)].max()) if len(r) else 1
        return table[0][torch.from_numpy(r)][:, :width], table[1][torch.from_numpy(r)]

    positive = np.flatnonzero(labels > 0.5)
    (q_ids, q_len), (d_ids, d_len) = rows(Q_TABLE, a), rows(D_TABLE, b)
    a_pos, b_pos = a[positive], b[positive]
    batch = {"q_ids": q_ids, "q_len": q_len, "d_ids": d_ids, "d_len": d_len,
             "labels": torch.from_numpy(labels), "positive": torch.from_numpy(positive),
             "same": torch.from_numpy(b_pos[:, None] == b[None, :]),
             "same_q": torch.from_numpy(a_pos[:, None] == a_pos[None, :]),
             "q_rows": torch.from_numpy(a), "d_rows": torch.from_numpy(b)}  # texts' table rows, across ranks
    if s is not None and len(positive):
        sampled = s[positive]
        batch["s_ids"], batch["s_len"] = rows(D_TABLE, sampled.reshape(-1))
        batch["clash"] = torch.from_numpy(sampled == b_pos[:, None])
    return batch


def _global(step: int, size: int, sampled: bool = True) -> tuple[Any, ...]:
    """A global batch: query rows, document rows, labels, and (``sampled``) 2 sampled document rows per pair."""
    rng = np.random.default_rng(100 + step)
    labels = (rng.random(size) < 0.7).astype(np.float32)
    labels[0] = 1.0
    s = rng.integers(0, 6, (size, 2))
    return rng.integers(0, 10, size), rng.integers(0, 6, size), labels, s if sampled else None


def _split(parts: tuple[Any, ...], rank: int) -> tuple[Any, ...]:
    """Rank ``rank``'s contiguous part (7 rows: 4 + 3, uneven on purpose)."""
    bounds = [0, (len(parts[0]) + 1) // 2, len(parts[0])]
    return tuple(None if x is None else x[bounds[rank] : bounds[rank + 1]] for x in parts)


def _loss(config: TrainConfig, gather: bool = True) -> MatchingLoss:
    torch.manual_seed(5)
    model = TwoTowerModel(ModelConfig.from_dict({"tower": TOWER, "shared_towers": True}, "model"))
    return MatchingLoss(model, config, gather=gather)


CONFIGS = {
    "softmax-both": TrainConfig(loss="pointwise+softmax", negatives="both", num_negatives=2),
    "hinge-in-batch": TrainConfig(loss="hinge", negatives="in-batch"),
}
SAMPLED = {"softmax-both": True, "hinge-in-batch": False}


def _worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather  # noqa: F401  (imported as the loss does)

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, init_method=f"file://{store}")
    results: dict[str, Any] = {}
    try:
        for name, config in CONFIGS.items():
            # one step: loss (mean over ranks) and DDP-averaged gradients
            module = _loss(config)
            ddp = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
            loss = ddp(_batch(*_split(_global(0, 7, SAMPLED[name]), rank)))
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            results[f"{name}/loss"] = float(total) / WORLD
            results[f"{name}/grads"] = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
            # five AdamW steps: the mean loss per step
            module = _loss(config)
            ddp = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
            opt = torch.optim.AdamW(module.parameters(), lr=0.05)
            curve = []
            for step in range(5):
                loss = ddp(_batch(*_split(_global(step, 8, SAMPLED[name]), rank)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total = loss.detach().clone()
                dist.all_reduce(total)
                curve.append(float(total) / WORLD)
            results[f"{name}/curve"] = curve
        # the gathered logits: this rank's queries against every rank's documents
        module = _loss(CONFIGS["softmax-both"])
        local = _batch(*_split(_global(0, 7), rank))
        from deepsem.losses.matching import _Gathered

        q = module.model.encode(local["q_ids"], local["q_len"], "query")
        d = module.model.encode(local["d_ids"], local["d_len"], "doc")
        d_all, offset = _Gathered().rows(d)
        results["logits"] = (q @ d_all.T).detach()
        results["offset"] = offset
        # CoSENT is not gathered: each rank ranks its own pairs, its term weighted by its share of the rows
        cosent = _loss(TrainConfig(loss="cosent"))
        total = cosent(local).detach().clone()
        dist.all_reduce(total)
        results["cosent_loss"] = float(total) / WORLD
        # gathering off: local x local
        off = _loss(CONFIGS["softmax-both"], gather=False)
        assert off._group() is None
        results["off_loss"] = float(off(local).detach())
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def _single(config: TrainConfig, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    module = _loss(config)
    loss = module(batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_the_gathered_logits_are_the_global_batch_squared(ranks: list[dict[str, Any]]) -> None:
    module = _loss(CONFIGS["softmax-both"])
    whole = _batch(*_global(0, 7))
    q = module.model.encode(whole["q_ids"], whole["q_len"], "query")
    d = module.model.encode(whole["d_ids"], whole["d_len"], "doc")
    expected = (q @ d.T).detach()
    logits = torch.cat([r["logits"] for r in ranks])
    assert [r["logits"].shape for r in ranks] == [(4, 7), (3, 7)]
    assert [r["offset"] for r in ranks] == [0, 4]
    torch.testing.assert_close(logits, expected, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_ranks_give_the_single_process_loss_and_gradients(ranks: list[dict[str, Any]], name: str) -> None:
    loss, grads = _single(CONFIGS[name], _batch(*_global(0, 7, SAMPLED[name])))
    assert ranks[0][f"{name}/loss"] == pytest.approx(loss, rel=RTOL)
    assert grads.keys() == ranks[0][f"{name}/grads"].keys()
    for rank in ranks:  # DDP leaves the averaged gradient on every rank
        for n, g in grads.items():
            torch.testing.assert_close(rank[f"{name}/grads"][n], g, rtol=RTOL, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_first_steps_follow_the_single_process_curve(ranks: list[dict[str, Any]], name: str) -> None:
    module = _loss(CONFIGS[name])
    opt = torch.optim.AdamW(module.parameters(), lr=0.05)
    curve = []
    for step in range(5):
        loss = module(_batch(*_global(step, 8, SAMPLED[name])))
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    assert len(set(curve)) > 1  # it trains
    assert ranks[0][f"{name}/curve"] == pytest.approx(curve, rel=1e-4)  # five Adam steps amplify 1e-7 a little


def test_without_gathering_each_rank_sees_its_local_batch(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        local = _batch(*_split(_global(0, 7), rank))
        module = _loss(CONFIGS["softmax-both"])
        assert result["off_loss"] == pytest.approx(float(module(local).detach()), rel=1e-6)
    whole = float(_loss(CONFIGS["softmax-both"])(_batch(*_global(0, 7))).detach())
    assert np.mean([r["off_loss"] for r in ranks]) != pytest.approx(whole, rel=1e-3)


def test_a_single_process_never_gathers_and_the_config_sets_the_default() -> None:
    assert _loss(CONFIGS["softmax-both"])._group() is None
    assert copy.deepcopy(_loss(CONFIGS["softmax-both"])).gather
    model = _loss(CONFIGS["softmax-both"]).model
    assert MatchingLoss(model, TrainConfig(gather_negatives=False)).gather is False
    assert MatchingLoss(model, TrainConfig(gather_negatives=False), gather=True).gather is True


def test_cosent_under_two_ranks_is_the_row_weighted_mean_of_each_ranks_own(ranks: list[dict[str, Any]]) -> None:
    module = _loss(TrainConfig(loss="cosent"))
    parts = [_batch(*_split(_global(0, 7), rank)) for rank in range(WORLD)]
    expected = sum(float(module(part).detach()) * len(part["labels"]) / 7 for part in parts)
    assert ranks[0]["cosent_loss"] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(float(module(_batch(*_global(0, 7))).detach()), rel=1e-3)  # not the global one
