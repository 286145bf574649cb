"""A dense model from a bare corpus (issue 17): SciFact, no training pairs, hybrid with BM25 against BM25 alone.

    python bench/corpus.py --data-dir ../shared/datasets --minutes 5          # full scale (the machine alone)
    python bench/corpus.py --data-dir ../shared/datasets --minutes 1 --configs dssm-ict   # a quick check

Each candidate setting trains a two-tower model with ``deepsem.train(corpus=...)`` on the SciFact corpus alone
(5,183 abstracts with titles; the inverse cloze task plus, where set, SimCSE dropout-noise pairs; the epoch kept
by MRR@10 on the ICT pairs of held-out abstracts) for at most ``--minutes``. Then each model goes into a deepsem
index of the corpus built with ``lexical=True`` (BM25 of ``bm25s``) and is searched in ``mode="hybrid"`` with the
cosine weight 0.5 of bench/retrieval.py. The setting is chosen by the hybrid MRR@10 on the SciFact *train*
claims (the dev split: 809 claims of which those judged), and only that one is scored on the *test* claims
(300). BM25 (words, ``rank_bm25``, as bench/retrieval.py: 0.6186 MRR@10 on test) and the same index's lexical
mode are the baselines; a hybrid weight chosen on dev from a grid is reported beside the fixed 0.5.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import deepsem
from deepsem.data import read_retrieval
from deepsem.index import Document, Index
from deepsem.metrics import retrieval_metrics

KS = (1, 10, 100)
WORD = re.compile(r"\w+", re.UNICODE)
GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

#: The candidate settings: name -> (deepsem.train keyword arguments). DSSM (letter trigrams) was best from little
#: data on WikiQA; the LSTM reads words (char tokenizer: whole Latin words) and costs far more per step.
CONFIGS: dict[str, dict[str, Any]] = {
    "dssm-ict": {"encoder": "dssm", "ict_pairs_per_doc": 4, "simcse_share": 0.0},
    "dssm-ict+simcse": {"encoder": "dssm", "ict_pairs_per_doc": 4, "simcse_share": 0.3},
    "lstm-ict+simcse": {"encoder": "lstm-peephole", "ict_pairs_per_doc": 2, "simcse_share": 0.3},
}


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def bm25_words(queries: dict[str, str], corpus: dict[str, str], qrels: dict[str, dict[str, int]]
               ) -> dict[str, float]:
    from rank_bm25 import BM25Okapi

    t0 = time.perf_counter()
    doc_ids = list(corpus)
    engine = BM25Okapi([words(corpus[i]) for i in doc_ids])
    run = {}
    for qid in (q for q in queries if q in qrels):
        scores = engine.get_scores(words(queries[qid]))
        top = np.argsort(-scores)[: max(KS)]
        run[qid] = {doc_ids[j]: float(scores[j]) for j in top}
    return {**retrieval_metrics(run, qrels, ks=KS), "seconds": time.perf_counter() - t0}


def search(index: Index, queries: dict[str, str], qrels: dict[str, dict[str, int]], mode: str,
           weight: float | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    qids = [q for q in queries if q in qrels]
    found = index.search([queries[q] for q in qids], k=max(KS), mode=mode, hybrid_weight=weight)
    run = {q: {h.id: h.score for h in hits} for q, hits in zip(qids, found, strict=True)}
    return {**retrieval_metrics(run, qrels, ks=KS), "seconds": time.perf_counter() - t0}


def train(name: str, settings: dict[str, Any], corpus: Path, out: Path, minutes: float, threads: int,
          seed: int) -> tuple[Any, float]:
    t0 = time.perf_counter()
    encoder = settings["encoder"]
    dssm = encoder == "dssm"
    tower = {"encoder": encoder} if dssm else {"encoder": encoder, "hidden_size": 128, "num_layers": 1}
    deepsem.train(corpus=corpus, out=out / name, tokenizer="trigram" if dssm else "char",
                  tokenizer_options={"max_length": 1024 if dssm else 128, "min_count": 2},
                  model={"tower": tower}, ict_pairs_per_doc=settings["ict_pairs_per_doc"],
                  simcse_share=settings["simcse_share"],
                  training={"loss": "softmax", "epochs": 100, "max_minutes": minutes, "batch_size": 256 if dssm else 64,
                            "patience": 4, "threads": threads, "seed": seed, "lr": 3e-3}, resume=False,
                  progress=False)
    return deepsem.load(out / name), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--minutes", type=float, default=5.0, help="training time limit per setting")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None, help="where the models go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = args.data_dir / "scifact"
    dev = read_retrieval(folder, split="train")
    test = read_retrieval(folder, split="test")
    corpus_file = folder / "corpus.jsonl"
    docs = [Document(i, t) for i, t in test.corpus.items()]  # title + " " + text, as every SciFact evaluation here

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "models"
        rows: dict[str, dict[str, Any]] = {}
        for name in args.configs:
            model, seconds = train(name, CONFIGS[name], corpus_file, out, args.minutes, args.threads, args.seed)
            index = Index.build(out / name, docs, Path(tmp) / f"index-{name}", "Flat", lexical=True)
            tuning = {w: search(index, dev.queries, dev.qrels, "hybrid", w)["mrr@10"] for w in GRID}
            rows[name] = {"model": model, "index": index, "train_seconds": seconds, "tuning": tuning,
                          "dev dense": search(index, dev.queries, dev.qrels, "dense")["mrr@10"],
                          "dev ict mrr@10": model.info.get("dev_metrics", {}).get("mrr@10", float("nan")),
                          "corpus": model.info.get("corpus", {})}
            print(f"{name}: trained {seconds:.0f} s ({rows[name]['corpus']}); dev (SciFact train claims) MRR@10 "
                  f"dense {rows[name]['dev dense']:.4f}, hybrid " + ", ".join(f"{w}: {v:.4f}" for w, v in
                                                                            tuning.items()), flush=True)
        chosen = max(rows, key=lambda n: rows[n]["tuning"][0.5])
        weight = max(GRID, key=lambda w: rows[chosen]["tuning"][w])
        best = rows[chosen]
        results: dict[str, dict[str, dict[str, float]]] = {"SciFact dev (train claims)": {}, "SciFact test": {}}
        results["SciFact dev (train claims)"]["BM25 (words)"] = bm25_words(dev.queries, dev.corpus, dev.qrels)
        for name, row in rows.items():
            results["SciFact dev (train claims)"][f"hybrid 0.5, {name}"] = search(row["index"], dev.queries,
                                                                                 dev.qrels, "hybrid", 0.5)
        table = results["SciFact test"]
        table["BM25 (words)"] = bm25_words(test.queries, test.corpus, test.qrels)
        table["deepsem lexical (bm25s)"] = search(best["index"], test.queries, test.qrels, "lexical")
        table[f"dense only, {chosen}"] = search(best["index"], test.queries, test.qrels, "dense")
        table[f"hybrid 0.5, {chosen}"] = search(best["index"], test.queries, test.qrels, "hybrid", 0.5)
        table[f"hybrid {weight} (dev), {chosen}"] = search(best["index"], test.queries, test.qrels, "hybrid", weight)

    print(f"\nchosen on dev: {chosen} (hybrid 0.5 dev MRR@10 {best['tuning'][0.5]:.4f}; trained "
          f"{best['train_seconds']:.0f} s, --minutes {args.minutes})")
    for task, table_rows in results.items():
        print(f"\n{task}")
        print(f"{'system':<44} {'MRR@10':>7} {'NDCG@10':>8} {'R@1':>6} {'R@10':>6} {'R@100':>6} {'seconds':>8}")
        for name, m in table_rows.items():
            print(f"{name:<44} {m['mrr@10']:7.4f} {m['ndcg@10']:8.4f} {m['recall@1']:6.4f} {m['recall@10']:6.4f} "
                  f"{m['recall@100']:6.4f} {m['seconds']:8.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"chosen": chosen, "weight": weight, "results": results,
                   "settings": {n: {**CONFIGS[n], "train_seconds": r["train_seconds"], "dev_hybrid": r["tuning"],
                                    "dev_dense": r["dev dense"], "corpus": r["corpus"]} for n, r in rows.items()}}
        args.json.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
