"""Encoding a corpus in shards: one process against N parts at once, a resumed run, and index build from the
vector shards against index build encoding the corpus itself.

    python bench/encode_shards.py --model runs/bq --docs 1000000 --shards 32 --parts 2 \\
        --json bench/results/encode_shards.json

The corpus is written under ``--scratch`` (never in git): ``--shards`` JSONL files of ``--docs`` documents whose
texts are real sentences of ``../shared/datasets`` (LCQMC, BQ, AFQMC questions, cycled with a numbered suffix
when more are asked for than there are). Every step is its own ``deepsem`` process (``python -m deepsem``), timed
wall-clock, with its peak RSS from the OS (``wait4``); the N parts run at the same time with ``OMP_NUM_THREADS``
= ``--threads`` / N each, the single process with ``--threads``. Reported: documents/s of each encode, the seconds
a finished run takes to check and skip every shard, index build seconds with ``--vectors`` and without, and
whether both indexes answer the same top-10 for 200 corpus sentences used as queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sentences(data_dir: Path) -> list[str]:
    out: list[str] = []
    for name in ("lcqmc/train.tsv", "lcqmc/test.tsv", "bq/train.tsv", "afqmc/train.tsv"):
        path = data_dir / name
        if not path.is_file():
            continue
        for line in path.read_text("utf-8").splitlines()[1:]:
            for text in line.split("\t")[:2]:
                text = "".join(text.split())
                if text and not text.isdigit():
                    out.append(text)
    return list(dict.fromkeys(out))


def write_corpus(directory: Path, texts: list[str], docs: int, shards: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    per = -(-docs // shards)
    for s in range(shards):
        with open(directory / f"part-{s:05d}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(s * per, min(docs, (s + 1) * per)):
                text = texts[i % len(texts)] + ("" if i < len(texts) else f" {i // len(texts)}")
                fh.write(json.dumps({"id": f"d{i}", "text": text, "shard": s}, ensure_ascii=False) + "\n")


def run(args: list[str], threads: int) -> tuple[float, float]:
    """``python -m deepsem ARGS`` (several lists: at the same time); wall seconds and the largest peak RSS (MB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "deepsem", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"deepsem {' '.join(args)} failed:\n{err}")
    return seconds, usage.ru_maxrss / 1024


def run_parallel(commands: list[list[str]], threads: int) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "deepsem", *c], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for c in commands]
    peak = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"a part failed:\n{proc.stderr.read().decode() if proc.stderr else ''}")
        peak = max(peak, usage.ru_maxrss / 1024)
    return time.perf_counter() - t0, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--factory", default="HNSW32")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch/encshards"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    texts = sentences(args.data_dir)
    if not texts:
        raise SystemExit(f"no sentences found under {args.data_dir}")
    scratch = args.scratch
    shutil.rmtree(scratch, ignore_errors=True)
    corpus = scratch / "corpus"
    write_corpus(corpus, texts, args.docs, args.shards)
    model = str(args.model)
    result: dict[str, object] = {"docs": args.docs, "shards": args.shards, "parts": args.parts,
                                 "threads": args.threads, "distinct_sentences": len(texts),
                                 "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": model}

    one = scratch / "one"
    seconds, rss = run(["encode", "--model", model, str(corpus), "--out", str(one), "--no-progress"], args.threads)
    result["one_process"] = {"seconds": round(seconds, 2), "docs_per_s": round(args.docs / seconds),
                             "peak_rss_mb": round(rss)}
    seconds, rss = run(["encode", "--model", model, str(corpus), "--out", str(one), "--no-progress"], args.threads)
    result["resume_all_done"] = {"seconds": round(seconds, 2), "peak_rss_mb": round(rss)}

    split = scratch / "parts"
    per_part = max(1, args.threads // args.parts)
    seconds, rss = run_parallel([["encode", "--model", model, str(corpus), "--out", str(split), "--no-progress",
                                  "--shard", f"{i}/{args.parts}"] for i in range(args.parts)], per_part)
    result["parts_at_once"] = {"seconds": round(seconds, 2), "docs_per_s": round(args.docs / seconds),
                               "peak_rss_mb_per_part": round(rss), "threads_per_part": per_part}
    seconds, _ = run(["encode", "--model", model, "--out", str(split), "--merge-manifest"], args.threads)
    result["merge_seconds"] = round(seconds, 2)

    from_vectors = scratch / "index-vectors"
    seconds, rss = run(["index", "build", "--model", model, "--corpus", str(corpus), "--vectors", str(split),
                        "--index", str(from_vectors), "--factory", args.factory, "--no-progress"], args.threads)
    result["index_build_from_shards"] = {"seconds": round(seconds, 2), "peak_rss_mb": round(rss)}
    itself = scratch / "index-encoding"
    seconds, rss = run(["index", "build", "--model", model, "--corpus", str(corpus), "--index", str(itself),
                        "--factory", args.factory, "--no-progress"], args.threads)
    result["index_build_encoding"] = {"seconds": round(seconds, 2), "peak_rss_mb": round(rss)}

    sys.path.insert(0, str(ROOT / "src"))
    from deepsem.index import Index

    a, b = Index.load(itself), Index.load(from_vectors)
    queries = texts[: min(200, len(texts))]
    same = sum([h.id for h in x] == [h.id for h in y]
               for x, y in zip(a.search(queries, k=10), b.search(queries, k=10), strict=True))
    result["same_top10_queries"] = f"{same}/{len(queries)}"
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
