"""Recommendation on MovieLens ml-100k: the LSTM two-tower model against most-popular, Item2Vec, and the
``implicit`` library's ALS and BPR, on one split in one run.

    python bench/recommend.py --json bench/results/recommend.json
    python bench/recommend.py --quick          # a smoke run: small grids, few epochs

Data (``--data-dir``, default ``../shared/datasets``): ``movielens/ml-100k`` (``u.data``, ``u.item``,
``u.user``; GroupLens licence, not redistributed). Every rating counts as an interaction.

Protocol: leave-last-out by time (ties in a user's timestamps keep the file order). Per user, the last item is
the test target, the one before it the validation target, the rest is training. Every method ranks *all*
1,682 items, the user's history excluded (no sampled candidates); ties are broken by item position for all.

- most-popular: training counts.
- Item2Vec (gensim skip-gram over users' training sequences, no down-sampling): window, the negative-sampling
  exponent and the number of last history items averaged into the user vector picked on validation HR@10, then
  refit on train + validation sequences for the test.
- ALS and BPR (``implicit``, benchmark environment only: ``pip install implicit``): factors, regularisation
  (and the learning rate for BPR) picked on validation HR@10, then refit on train + validation interactions.
- deepsem two-tower (``--encoders``, default ``lstm-peephole``): the user tower reads the history (item id +
  genres + decade + title words, and the user's age band, gender and occupation); trained on the training
  sequences only, early stopping on validation NDCG@10; its test history includes the validation item, as for
  every other method. ``--variants`` adds ablations of the first encoder's model (:data:`VARIANTS`).

Seeds: ``--seed`` (13) for every method. Threads: ``--threads`` (2) for torch, implicit and gensim (gensim: 1
worker, for determinism). Training time: the wall time of the chosen setting's fit (the tuning grid's total is
in the JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_matrix

from deepsem.data.interactions import SequenceSplit, load_movielens, split_sequences
from deepsem.item2vec import train_item2vec
from deepsem.tasks.recommendation import (
    evaluate_ranking_over_items,
    evaluate_recommender,
    popularity_scores,
    train_recommender,
)

KS = (10, 50)


def user_items(split: SequenceSplit, with_valid: bool) -> csr_matrix:
    rows, cols = [], []
    for u in range(len(split.users)):
        items = split.history(u, "test") if with_valid else split.train[u]
        rows.extend([u] * len(items))
        cols.extend(items.tolist())
    data = np.ones(len(rows), dtype=np.float32)
    matrix = csr_matrix((data, (rows, cols)), shape=(len(split.users), split.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def factor_scorer(model: Any):
    users = np.asarray(model.user_factors)
    items = np.asarray(model.item_factors)

    def score(us, histories):
        return users[np.asarray(us)] @ items.T

    return score


def run_implicit(kind: str, split: SequenceSplit, grid: list[dict[str, Any]], seed: int, threads: int
                 ) -> dict[str, Any]:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    cls = AlternatingLeastSquares if kind == "als" else BayesianPersonalizedRanking
    t_grid = time.perf_counter()
    best: tuple[float, dict[str, Any]] | None = None
    train_m = user_items(split, with_valid=False)
    for params in grid:
        model = cls(**params, random_state=seed, num_threads=threads)
        model.fit(train_m, show_progress=False)
        hr = evaluate_ranking_over_items(factor_scorer(model), split, "valid", KS)["hr@10"]
        if best is None or hr > best[0]:
            best = (hr, params)
    assert best is not None
    grid_seconds = time.perf_counter() - t_grid
    model = cls(**best[1], random_state=seed, num_threads=threads)
    t0 = time.perf_counter()
    model.fit(user_items(split, with_valid=True), show_progress=False)
    seconds = time.perf_counter() - t0
    metrics = evaluate_ranking_over_items(factor_scorer(model), split, "test", KS)
    return {"metrics": metrics, "train_seconds": seconds, "grid_seconds": grid_seconds, "params": best[1],
            "valid_hr@10": best[0]}


def run_item2vec(split: SequenceSplit, grid: list[dict[str, Any]], last_ns: list[int], seed: int
                 ) -> dict[str, Any]:
    t_grid = time.perf_counter()
    best: tuple[float, dict[str, Any], int] | None = None
    for params in grid:
        vectors = train_item2vec([s.tolist() for s in split.train], seed=seed, **params)
        for last_n in last_ns:
            hr = evaluate_ranking_over_items(vectors.scorer(split, last_n), split, "valid", KS)["hr@10"]
            if best is None or hr > best[0]:
                best = (hr, params, last_n)
    assert best is not None
    grid_seconds = time.perf_counter() - t_grid
    t0 = time.perf_counter()
    vectors = train_item2vec([split.history(u, "test").tolist() for u in range(len(split.users))], seed=seed,
                             **best[1])
    seconds = time.perf_counter() - t0
    metrics = evaluate_ranking_over_items(vectors.scorer(split, best[2]), split, "test", KS)
    return {"metrics": metrics, "train_seconds": seconds, "grid_seconds": grid_seconds,
            "params": {**best[1], "last_n": best[2]}, "valid_hr@10": best[0]}


#: Variants of the two-tower model (``--variants``), each against the default (softmax over all items, every
#: feature): the training objective, the features, the initialisation.
VARIANTS: dict[str, dict[str, Any]] = {
    "in-batch+logq": {"negatives": "in-batch"},
    "in-batch, no logq": {"negatives": "in-batch", "logq": False},
    "sampled 256+logq": {"negatives": "sampled", "num_negatives": 256},
    "sampled 256, no logq": {"negatives": "sampled", "num_negatives": 256, "logq": False},
    "ids only": {"use_item_features": False, "use_user_features": False},
    "no user features": {"use_user_features": False},
    "item2vec init": {"item2vec_init": True},
}


def run_two_tower(data: Any, split: SequenceSplit, encoder: str, args: argparse.Namespace, out: Path,
                  **options: Any) -> dict[str, Any]:
    options.setdefault("negatives", args.negatives)
    t0 = time.perf_counter()
    rec, result = train_recommender(
        split, out, config={"encoder": encoder, **json.loads(args.config)},
        training={"epochs": args.epochs, "threads": args.threads, "seed": args.seed, "patience": args.patience},
        interactions=data, progress=False, resume=False, **options)
    seconds = time.perf_counter() - t0
    metrics = evaluate_recommender(rec, split, "test", KS, user_features=data.user_features)
    return {"metrics": metrics, "train_seconds": seconds, "epochs_run": result.epochs_run,
            "stopped": result.stopped, "valid_ndcg@10": result.best_metric,
            "params": {"encoder": encoder, **options, **rec.config.to_dict()}}


def latency(rec: Any, split: SequenceSplit, threads: int = 1) -> dict[str, float]:
    """In-process answer time of ``rec.recommend(history, k=10)``, one request at a time, over every test
    user's history (ids in, ids out: the user tower, the Faiss search and the seen-item filter)."""
    torch.set_num_threads(threads)
    histories = [[split.items[i] for i in split.history(u, "test")] for u in split.examples("test")[0]]
    for h in histories[:50]:
        rec.recommend(h, k=10)
    times = []
    for h in histories:
        t0 = time.perf_counter()
        rec.recommend(h, k=10)
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    rec.recommend_many(histories, k=10)
    batch_s = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "per_s_one_at_a_time": len(times) / (sum(times) / 1000), "per_s_batched": len(histories) / batch_s,
            "threads": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/datasets")
    p.add_argument("--encoders", default="lstm-peephole", help="comma-separated user-tower encoders")
    p.add_argument("--negatives", default="full", choices=("full", "in-batch", "sampled"))
    p.add_argument("--config", default="{}", help="JSON of RecommenderConfig fields for the two-tower model")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small grids and few epochs (a smoke run)")
    p.add_argument("--skip", default="", help="comma-separated baselines to skip: pop,item2vec,als,bpr")
    p.add_argument("--variants", default="", help=f"comma-separated variants of the first encoder's model: "
                   f"{', '.join(VARIANTS)}; 'all' for every one")
    p.add_argument("--out", default="runs/recommend")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        args.epochs = 2

    data = load_movielens(Path(args.data_dir) / "movielens" / "ml-100k")
    split = split_sequences(data, n_test=1, n_valid=1)
    n_test = len(split.examples("test")[0])
    print(f"ml-100k: {len(data)} interactions, {len(split.users)} users, {split.n_items} items, "
          f"{n_test} test users (leave-last-out by time)")
    results: dict[str, Any] = {}
    if "pop" not in skip:
        t0 = time.perf_counter()
        scorer = popularity_scores(split)
        seconds = time.perf_counter() - t0
        results["most-popular"] = {"metrics": evaluate_ranking_over_items(scorer, split, "test", KS),
                                   "train_seconds": seconds, "params": {}}
    if "item2vec" not in skip:
        grid = [{"dim": 64, "window": w, "epochs": 20, "ns_exponent": ns}
                for w, ns in itertools.product((2, 5, 10), (0.75, 0.0, -0.5))]
        if args.quick:
            grid = grid[:1]
        results["item2vec"] = run_item2vec(split, grid, [1, 3, 10] if not args.quick else [3], args.seed)
    factors = (32, 64, 128) if not args.quick else (32,)
    if "als" not in skip:
        grid = [{"factors": f, "regularization": r, "iterations": 20, "alpha": a}
                for f, r, a in itertools.product(factors, (0.01, 0.1, 1.0), (1.0, 5.0, 20.0))]
        results["implicit-als"] = run_implicit("als", split, grid[: 1 if args.quick else None], args.seed,
                                               args.threads)
    if "bpr" not in skip:
        grid = [{"factors": f, "regularization": r, "learning_rate": lr, "iterations": it}
                for f, r, lr, it in itertools.product(factors, (0.001, 0.01), (0.01, 0.05), (100, 300))]
        results["implicit-bpr"] = run_implicit("bpr", split, grid[: 1 if args.quick else None], args.seed,
                                               args.threads)
    encoders = args.encoders.split(",")
    for encoder in encoders:
        results[f"deepsem {encoder}"] = run_two_tower(data, split, encoder, args, Path(args.out) / encoder)
    if encoders:
        from deepsem.tasks.recommendation import Recommender

        timing = latency(Recommender.load(Path(args.out) / encoders[0]), split)
        torch.set_num_threads(args.threads)
        results[f"deepsem {encoders[0]}"]["latency"] = timing
        print(f"deepsem {encoders[0]}: recommend(history, k=10) p50 {timing['p50_ms']:.2f} ms, p99 "
              f"{timing['p99_ms']:.2f} ms, {timing['per_s_one_at_a_time']:.0f}/s one at a time, "
              f"{timing['per_s_batched']:.0f}/s batched (1 thread)")
    variants = list(VARIANTS) if args.variants == "all" else list(filter(None, args.variants.split(",")))
    for name in variants:
        results[f"deepsem {encoders[0]} {name}"] = run_two_tower(
            data, split, encoders[0], args, Path(args.out) / f"{encoders[0]}-{name.replace(' ', '')}",
            **VARIANTS[name])

    header = f"{'method':<44} {'HR@10':>7} {'NDCG@10':>8} {'Recall@50':>9} {'MRR':>7} {'cov@10':>7} {'train s':>8}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        m = r["metrics"]
        print(f"{name:<44} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f} {m['recall@50']:>9.4f} {m['mrr']:>7.4f} "
              f"{m['coverage@10']:>7.3f} {r['train_seconds']:>8.1f}")
    ours = [r for name, r in results.items() if name.startswith("deepsem")]
    others = [r for name, r in results.items() if not name.startswith("deepsem")]
    if ours and others:
        best_other = max(others, key=lambda r: r["metrics"]["hr@10"])
        for name, r in results.items():
            if name.startswith("deepsem"):
                ratio = r["metrics"]["hr@10"] / best_other["metrics"]["hr@10"]
                print(f"{name}: HR@10 {ratio:.2f}x the best baseline")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"dataset": "ml-100k", "protocol": "leave-last-out by time, all items ranked, seen excluded",
                   "seed": args.seed, "threads": args.threads, "torch": torch.__version__, "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
