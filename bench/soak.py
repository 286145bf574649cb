"""Soak test of ``deepsem serve``: POST /search at a fixed concurrency for a fixed time, on loopback.

    python bench/soak.py --index runs/bench-search/100000-HNSW32 --duration 60 --concurrency 32
    python bench/soak.py --duration 60 --concurrency 32            # builds its own model and 100k index first
    python bench/soak.py --duration 5 --size 10000                 # a quick check

The server runs in its own process (``deepsem serve``, as users start it: uvloop, the bounded httptools
protocol, the app's limits). The load comes from this process: ``--concurrency`` asyncio clients, each on
its own keep-alive connection (raw HTTP/1.1 over a socket, like wrk; neither wrk nor locust is needed), each
sending one LCQMC test question per request (k=10) and waiting for the answer before the next. Reported:
requests/s, errors (non-200 answers, broken connections, answers slower than ``--timeout``), p50/p99 latency,
and the server's resident memory (VmRSS from /proc/PID/status) at the start and the end of the run, sampled
every second, so that a leak shows as a slope. The JSON goes to ``--json`` (default bench/results/soak.json).

Without ``--index`` it builds one under ``--work``: a small LSTM-DSSM (char tokenizer) trained for
``--train-minutes`` on the shipped Tatoeba English-Chinese pairs, then ``--size`` real Chinese sentences from
``--data-dir`` (the pair, NLI and news sets; pairs of them joined where the sets run out), HNSW32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from serve import wait_ready  # bench/serve.py: poll /healthz until the server answers

TEXT_FILES = ["bq/train.tsv", "bq/dev.tsv", "afqmc/train.tsv", "atec/train_partial.tsv", "chip2019/train.tsv",
              "kuake_qqr/train.tsv", "qbqtc/dev.tsv", "qbqtc/train_preliminary_2021-10.tsv", "ocnli/train_10k.tsv",
              "lcqmc/dev.tsv", "thucnews/train.txt", "thucnews/dev.txt", "thucnews/test.txt", "stsb_zh/train.tsv"]


def corpus_texts(data_dir: Path, size: int) -> list[str]:
    """``size`` distinct real sentences (first columns of the text files), topped up with joined pairs."""
    seen: dict[str, None] = {}
    for name in TEXT_FILES:
        path = data_dir / name
        if not path.is_file():
            continue
        for line in path.read_text("utf-8", errors="replace").splitlines():
            for text in line.split("\t")[:2]:
                text = text.strip()
                if text and not text.isdigit() and len(text) <= 200:
                    seen[text] = None
            if len(seen) >= size:
                return list(seen)[:size]
    texts = list(seen)
    if not texts:
        sys.exit(f"no text files under {data_dir}: give --data-dir")
    rng = np.random.default_rng(0)
    while len(texts) < size:
        i, j = rng.integers(len(seen), size=2)
        texts.append(texts[i] + "，" + texts[j])
    return texts[:size]


def build_index(work: Path, data_dir: Path, size: int, minutes: float) -> Path:
    """Train a small model on the shipped Tatoeba pairs for ``minutes``, index ``size`` texts; the index path."""
    import deepsem
    from deepsem.demo import load_tatoeba, split_pairs
    from deepsem.index import Document, Index

    index_dir = work / f"index-{size}"
    if (index_dir / "CURRENT").is_file():
        print(f"reusing {index_dir}", flush=True)
        return index_dir
    en, zh, _ = load_tatoeba()
    train_pairs, dev_pairs = split_pairs(en, zh)
    t0 = time.perf_counter()
    model, _ = deepsem.train(train_pairs, work / "model", dev_pairs, tokenizer="char",
                             tokenizer_options={"min_count": 2},
                             model={"tower": {"embedding_dim": 64, "hidden_size": 128, "output_dim": 64}},
                             training={"max_minutes": minutes, "epochs": 50, "batch_size": 64},
                             resume=False, progress=False)
    print(f"trained for {time.perf_counter() - t0:.0f} s", flush=True)
    texts = corpus_texts(data_dir, size)
    t0 = time.perf_counter()
    Index.build(model, (Document(str(i), t) for i, t in enumerate(texts)), index_dir, "HNSW32")
    print(f"indexed {len(texts):,} texts in {time.perf_counter() - t0:.0f} s -> {index_dir}", flush=True)
    return index_dir


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")



async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length")
    return status, await reader.readexactly(length)


async def client(port: int, requests: list[bytes], start: int, stop_at: float, timeout: float,
                 latencies: list[float], errors: dict[str, int]) -> None:
    i = start
    reader = writer = None
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status, _ = await asyncio.wait_for(read_response(reader), timeout)  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, StopIteration) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
        i += 1
    if writer is not None:
        writer.close()


async def load(port: int, bodies: list[bytes], concurrency: int, duration: float, timeout: float, pid: int
               ) -> dict[str, object]:
    requests = [b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    rss: list[tuple[float, float]] = [(0.0, rss_mb(pid))]
    t0 = time.monotonic()
    stop_at = t0 + duration

    async def sample() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            rss.append((round(time.monotonic() - t0, 1), rss_mb(pid)))

    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*(client(port, requests, c * 97, stop_at, timeout, latencies, errors)
                           for c in range(concurrency)))
    elapsed = time.monotonic() - t0
    await sampler
    rss.append((round(elapsed, 1), rss_mb(pid)))
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "seconds": round(elapsed, 1), "requests": len(latencies),
            "rps": round(len(latencies) / elapsed, 1), "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "rss_start_mb": round(rss[0][1], 1), "rss_end_mb": round(rss[-1][1], 1),
            "rss_max_mb": round(max(r for _, r in rss), 1), "rss_samples": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="an index built by deepsem (default: build one)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--work", type=Path, default=Path("runs/soak"), help="where a built index goes")
    parser.add_argument("--size", type=int, default=100_000, help="documents in a built index")
    parser.add_argument("--train-minutes", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="an answer slower than this is an error")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--server-args", default="", help="more `deepsem serve` options")
    parser.add_argument("--json", type=Path, default=Path("bench/results/soak.json"))
    args = parser.parse_args()

    index = args.index or build_index(args.work, args.data_dir, args.size, args.train_minutes)
    lcqmc = (args.data_dir / "lcqmc/test.tsv").read_text("utf-8").splitlines()
    queries = list(dict.fromkeys(line.split("\t")[0] for line in lcqmc))[:2000]
    bodies = [json.dumps({"queries": q, "k": 10}, ensure_ascii=False).encode() for q in queries]
    server = subprocess.Popen([sys.executable, "-m", "deepsem.cli", "serve", "--index", str(index),
                               "--port", str(args.port), *args.server_args.split()],
                              stdout=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(url, timeout=300.0)
        asyncio.run(load(args.port, bodies, 4, args.warmup, args.timeout, server.pid))
        result = asyncio.run(load(args.port, bodies, args.concurrency, args.duration, args.timeout, server.pid))
        with urllib.request.urlopen(url + "/stats") as r:
            stats = json.loads(r.read())
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    print(f"POST /search (k=10, one query per request) over {stats['index']['documents']:,} documents "
          f"({stats['index']['factory']}), concurrency {result['concurrency']}, {result['seconds']} s, server and "
          f"client on the same machine ({os.cpu_count()} cores)")
    print(f"{'requests/s':>11} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS start MB':>13} "
          f"{'RSS end MB':>11} {'RSS max MB':>11}")
    print(f"{result['rps']:>11.0f} {result['requests']:>9} {result['errors']:>7} {result['p50_ms']:>8.2f} "
          f"{result['p99_ms']:>8.2f} {result['rss_start_mb']:>13.1f} {result['rss_end_mb']:>11.1f} "
          f"{result['rss_max_mb']:>11.1f}")
    if result["errors"]:
        print(f"errors: {result['error_kinds']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"result": result, "stats": stats, "python": platform.python_version(),
                                     "index": str(index)}, indent=2), encoding="utf-8")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
