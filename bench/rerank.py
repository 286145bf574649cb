"""What a cross-encoder re-ranking stage costs: ``CrossEncoder.rank`` of one query x N candidates (p50 / p99 latency
per query) and bulk ``score`` throughput (pairs/s), on real BQ texts.

    python bench/rerank.py                                   # full scale: 500 queries x 50 candidates, 2 threads
    python bench/rerank.py --model runs/rerank-bq            # a trained model (else untrained weights, same cost)
    python bench/rerank.py --queries 20 --bulk 1000          # a quick check
    python bench/rerank.py --model runs/rerank-bq --backends torch onnx int8   # each backend, the same queries
    python bench/rerank.py --model runs/rerank-bq --backends int8 --document-cache warm cold   # and the cache

The issue's target: re-ranking 50 candidates adds <= 5 ms p50 per query on a 2-core CPU. Speed does not depend on
the weights, so without ``--model`` a model of the default size (:class:`deepsem.config.CrossEncoderConfig`, or
``--hidden`` / ``--embedding-dim``) is built with a character tokenizer learnt from the data. Queries are the
data's text_a, candidates drawn at random from its text_b (seeded). Run it with the machine to itself.

Every system answers each query in turn (the order rotating), so that a slower minute of the machine falls on all
of them alike; ``ratio_p50`` is the median over queries of each system's time over the first system's. Each
onnxruntime session has its own threads, which spin for a while after each run and slow the next session's run on
2 cores: compare onnxruntime systems one per process (``--cached-only``, separate runs) for absolute times.
``--document-cache warm`` adds each backend with the re-ranker's document cache (``CrossEncoder.cache_documents``)
filled before the first query (every document's states: what a service over a fixed corpus ends up with; its
``warm_seconds`` is what filling it took); ``cold`` with the cache empty at the start, filled as the queries meet
documents.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import deepsem
from deepsem.config import CrossEncoderConfig
from deepsem.data.pairs import as_pairs
from deepsem.deploy.export import export_onnx
from deepsem.models.cross_encoder import CrossEncoderModel
from deepsem.tasks.rerank import CrossEncoder
from deepsem.text import build_tokenizer


def model_for(args: argparse.Namespace, texts: list[str]) -> CrossEncoder:
    if args.model is not None:
        loaded = deepsem.load(args.model)
        if not isinstance(loaded, CrossEncoder):
            raise SystemExit(f"{args.model}: not a cross-encoder")
        return loaded
    tokenizer = build_tokenizer("char", texts, min_count=1, max_length=args.max_length)
    config = CrossEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden, exact_match=args.exact_match,
                                embedding_dim=args.embedding_dim, encoder=args.encoder)
    torch.manual_seed(0)
    return CrossEncoder(CrossEncoderModel(config), tokenizer)


def systems(args: argparse.Namespace, model: CrossEncoder, workdir: Path,
            docs: list[str]) -> tuple[dict[str, CrossEncoder], dict[str, float]]:
    """The model on each backend of ``--backends``: torch, onnx (fp32, exported in memory), int8 (an exported int8
    file through onnxruntime); with ``--document-cache`` each also as ``NAME+cache``, its cache filled with every
    document (``NAME+cache``, and the seconds that took) and ``NAME+cold`` with it empty."""
    found: dict[str, CrossEncoder] = {}
    warm: dict[str, float] = {}
    for name in args.backends:
        if name == "int8":
            export_onnx(model, workdir / "reranker-int8.onnx", quantize="int8")
        for cache in ("",) * (not args.cached_only) + tuple(args.document_cache):
            system = model if name == "torch" and not cache else model.__class__(model.model, model.tokenizer,
                                                                                 model.info)
            if name != "torch":
                system.use_backend("onnx", workdir / "reranker-int8.onnx" if name == "int8" else None)
            label = {"": name, "warm": f"{name}+cache", "cold": f"{name}+cold"}[cache]
            if cache:
                system.cache_documents(args.cache_mb)
            if cache == "warm":
                t0 = time.perf_counter()
                system.encode_documents(docs)
                warm[label] = round(time.perf_counter() - t0, 2)
            found[label] = system
    return found, warm


def measure(found: dict[str, CrossEncoder], args: argparse.Namespace, pairs: Any, queries: list[str],
            docs: list[str]) -> dict[str, dict[str, Any]]:
    """p50 / p99 of ``rank`` (one query x ``--candidates``) of every system on the same queries, in turn, and each
    one's bulk ``score`` throughput."""
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(queries), size=min(args.queries + args.warmup, len(queries)), replace=False)
    names = list(found)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for n, q in enumerate(chosen):
        candidates = [docs[j] for j in rng.choice(len(docs), size=args.candidates, replace=False)]
        for name in names[n % len(names):] + names[: n % len(names)]:
            t0 = time.perf_counter()
            found[name].rank(queries[q], candidates)
            if n >= args.warmup:
                latencies[name].append(time.perf_counter() - t0)
    first = np.asarray(latencies[names[0]])
    bulk = [(pairs.text_a[i % len(pairs.text_a)], pairs.text_b[i % len(pairs.text_b)]) for i in range(args.bulk)]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        ms = np.asarray(latencies[name]) * 1000
        found[name].score(bulk[: min(256, len(bulk))])  # warm-up
        t0 = time.perf_counter()
        found[name].score(bulk, batch_size=256)
        bulk_seconds = time.perf_counter() - t0
        out[name] = {
            "queries": len(ms), "candidates": args.candidates,
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2),
            "ratio_p50": round(float(np.median(np.asarray(latencies[name]) / first)), 3),
            "rerank_pairs_per_s": round(args.candidates * len(ms) / (ms.sum() / 1000), 1),
            "bulk_pairs": len(bulk), "bulk_pairs_per_s": round(len(bulk) / bulk_seconds, 1),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    pairs = as_pairs(args.data)
    queries, docs = list(dict.fromkeys(pairs.text_a)), list(dict.fromkeys(pairs.text_b))
    model = model_for(args, queries + docs)
    c = model.model.config
    result: dict[str, Any] = {
        "model": str(args.model) if args.model else "untrained", "encoder": c.encoder, "hidden_size": c.hidden_size,
        "exact_match": c.exact_match,
        "embedding_dim": c.embedding_dim, "parameters": sum(p.numel() for p in model.model.parameters()),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="deepsem-rerank-bench-") as tmp:
        found, warm = systems(args, model, Path(tmp), docs)
        for name, measured in measure(found, args, pairs, queries, docs).items():
            result[name] = {**measured, **({"warm_seconds": warm[name]} if name in warm else {}),
                            **({"document_cache": found[name].document_cache} if found[name].document_cache else {})}
            print(f"{name:<12} p50 {measured['p50_ms']:.2f} ms, p99 {measured['p99_ms']:.2f} ms, p50 ratio "
                  f"{measured['ratio_p50']:.3f}, bulk {measured['bulk_pairs_per_s']:,.0f} pairs/s", flush=True)
    if "torch" in result:
        for name in found:
            if name != "torch":
                result[name]["p50_vs_torch"] = round(result["torch"]["p50_ms"] / result[name]["p50_ms"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/bq/dev.tsv"))
    parser.add_argument("--model", type=Path, default=None, help="a cross-encoder model directory")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--bulk", type=int, default=10_000, help="pairs scored in bulk for throughput")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=CrossEncoderConfig.hidden_size)
    parser.add_argument("--embedding-dim", type=int, default=CrossEncoderConfig.embedding_dim)
    parser.add_argument("--encoder", default=CrossEncoderConfig.encoder, help="the recurrent cell (untrained model "
                        "only): lstm-peephole, lstm, lstm-coupled, gru, rnn")
    parser.add_argument("--exact-match", action="store_true", help="the word-overlap flags (untrained model only)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", choices=("torch", "onnx", "int8"), default=["torch"],
                        help="what runs the model, each measured on the same queries: torch, onnx (onnxruntime "
                        "fp32) and int8 (onnxruntime, deepsem export --quantize int8)")
    parser.add_argument("--document-cache", nargs="*", choices=("warm", "cold"), default=[], help="also measure "
                        "each backend with the re-ranker's document cache: warm (filled with every document first), "
                        "cold (empty at the start)")
    parser.add_argument("--cache-mb", type=float, default=512.0, help="the document cache's budget")
    parser.add_argument("--cached-only", action="store_true", help="measure only the --document-cache systems "
                        "(one per process: onnxruntime's per-session thread pools, spinning after each run, slow "
                        "the other sessions of a process down)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
