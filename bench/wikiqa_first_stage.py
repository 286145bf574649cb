"""The WikiQA first stage (bench/retrieval.py's DSSM recipe) trained plain or with an embedding teacher's relations
distilled (``--relation-weight``), from finished vector caches of the teacher merged into one keyed by text.

    # the e5 caches a distilled WikiQA re-ranker wrote (questions "query: ", sentences "passage: ")
    python bench/wikiqa_first_stage.py --out runs/wikiqa-dssm-rel --relation-weight 1 \\
        --caches runs/wikiqa-two-stage-e5/rerank/training/teacher_vectors-query-* \\
                 runs/wikiqa-two-stage-e5/rerank/training/teacher_vectors-passage-*
    python bench/wikiqa_first_stage.py --out runs/wikiqa-dssm-plain          # the same recipe, no teacher
    python bench/wikiqa_two_stage.py --model runs/wikiqa-dssm-rel --reranker RERANKER ...   # then score it

The caches' texts must not overlap with different vectors (a question and a sentence are different texts here).
Training pairs: :func:`retrieval.wikiqa_training_pairs` (WikiQA-train question -> answer x 5, title -> sentence and
sentence -> sentence of every article); ``--minutes`` of training at ``--threads``, best by dev MRR@10.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import deepsem
from deepsem.fileio import atomic_write_json, atomic_write_npy
from deepsem.tasks.distill import CACHE_FORMAT, _pack, load_vectors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import wikiqa_training_pairs


def merge_caches(caches: list[Path], out: Path) -> Path:
    """One finished vector cache at ``out`` holding every text of ``caches`` (the first cache's vector of a text
    that several hold)."""
    keys: dict[bytes, np.ndarray] = {}
    teachers = []
    for cache in caches:
        lookup, vectors, manifest = load_vectors(cache)
        teachers.append(str(manifest.get("teacher")))
        for key, row in lookup.items():
            keys.setdefault(key, vectors[row])
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise SystemExit(f"{out}: exists and is not a vector cache; not overwriting it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_npy(out / "vectors.npy", np.stack(list(keys.values())).astype(np.float32))
    atomic_write_npy(out / "keys.npy", _pack(list(keys)))
    atomic_write_json(out / "manifest.json", {"format": CACHE_FORMAT, "teacher": "+".join(teachers),
                                              "dim": int(next(iter(keys.values())).shape[0]), "count": len(keys),
                                              "chunk": len(keys), "texts": "merged", "complete": True})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--caches", type=Path, nargs="*", default=[], help="finished vector caches of the teacher")
    parser.add_argument("--relation-weight", type=float, default=0.0, help="0: no teacher (plain)")
    parser.add_argument("--relation-temperature", type=float, default=0.05)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--articles", nargs="+", default=["train", "dev", "test"], choices=("train", "dev", "test"),
                        help="the splits whose articles give title -> sentence and sentence -> sentence pairs "
                             "(answer ranking: train dev, so no test sentence is seen)")
    args = parser.parse_args()
    extra = {}
    if args.relation_weight:
        if not args.caches:
            raise SystemExit("--relation-weight needs --caches")
        extra = {"teacher_vectors": merge_caches(args.caches, args.out.with_name(args.out.name + "-teacher")),
                 "distill": {"vector_weight": 0.0, "relation_weight": args.relation_weight,
                             "relation_temperature": args.relation_temperature}}
    train, dev = wikiqa_training_pairs(args.data_dir, articles_of=tuple(args.articles))
    model, result = deepsem.train(train, args.out, dev, tokenizer="trigram", model={"tower": {"encoder": "dssm"}},
                                  training={"loss": "softmax", "epochs": 100, "max_minutes": args.minutes,
                                            "batch_size": 256, "patience": 20, "threads": args.threads},
                                  resume=False, progress=False, **extra)
    print(json.dumps({"steps": result.steps, "seconds": round(result.seconds, 1),
                      "dev_mrr@10": model.info.get("dev_metrics", {}).get("mrr@10")}))


if __name__ == "__main__":
    main()
