"""Training on click logs larger than memory: peak RSS, time to first step and pairs/s of ``deepsem train`` on
synthetic click logs of 1M, 10M and 50M rows streamed from Parquet shards, against today's in-memory path (one
Parquet file) on the sizes it can take.

    python bench/scale.py --sizes 1M,10M,50M --steps 300 --json bench/results/scale.json   # the full run, alone
    python bench/scale.py --sizes 20k,100k --steps 20                                      # a quick check

The generator (seeded) builds each log from real texts of ``--data-dir`` (../shared/datasets): the positive pairs
of BQ, LCQMC, AFQMC, ATEC, CHIP2019 and QBQTC are query -> clicked texts; a row is a query (drawn with a Zipf-like
skew, as search traffic is), and either one of its clicked texts (clicks 1-5, impressions at least as many) or a
random text of the whole pool shown and not clicked (clicks 0, impressions 1-3). Rows are written as Parquet shards
of ``--shard-rows`` rows under ``--scratch``/SIZE/ (reused when present; never commit them), and for the in-memory
path as one Parquet file ``--scratch``/SIZE.parquet holding the same rows.

Each measured run is a fresh ``python -m deepsem train`` subprocess (``--clicks --columns query,doc,clicks
--impressions impressions``, the same model and training settings, ``--max-steps --steps``; the stream with
``--vocab-sample``). Measured: peak RSS from the OS (the child's ``ru_maxrss`` from ``os.wait4``), time to first
step (from launching the process to the end of its first optimiser step, read from a timestamp the child records
on every optimiser step), and pairs/s over the steps after the first. An in-memory run the machine cannot hold is
reported with how it ended (exit status; -9: killed, e.g. by the OOM killer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PAIR_FILES = ("bq/train.tsv", "lcqmc/dev.tsv", "lcqmc/test.tsv", "afqmc/train.tsv", "atec/train_partial.tsv",
              "chip2019/train.tsv", "qbqtc/dev.tsv", "qbqtc/train_preliminary_2021-10.tsv")


def parse_size(text: str) -> int:
    """``20k`` -> 20_000, ``1M`` -> 1_000_000, ``1500`` -> 1500."""
    text = text.strip()
    scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000, "g": 10**9, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def real_texts(data_dir: Path) -> tuple[list[str], list[list[int]], list[str]]:
    """Queries, the clicked texts of each (indices into the pool) and the pool of every text, from real pairs."""
    pool: dict[str, int] = {}
    clicked: dict[str, list[int]] = {}
    for name in PAIR_FILES:
        path = data_dir / name
        if not path.exists():
            continue
        for line in path.read_text("utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or not parts[0].strip() or not parts[1].strip():
                continue
            a, b = parts[0].strip(), parts[1].strip()
            for t in (a, b):
                pool.setdefault(t, len(pool))
            if parts[2].strip() in ("1", "2"):  # a relevant pair (qbqtc: 1, 2)
                clicked.setdefault(a, []).append(pool[b])
    if not clicked:
        raise SystemExit(f"no positive pairs found under {data_dir} (expected {', '.join(PAIR_FILES[:2])}, ...)")
    queries = sorted(clicked)
    return queries, [clicked[q] for q in queries], list(pool)


def write_log(folder: Path, rows: int, shard_rows: int, seed: int, data_dir: Path) -> list[Path]:
    """The shards of a ``rows``-row click log (generated once; reused when complete)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_shards = -(-rows // shard_rows)
    paths = [folder / f"part-{k:05d}.parquet" for k in range(n_shards)]
    if all(p.exists() for p in paths) and sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == rows:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    queries, clicked, pool = real_texts(data_dir)
    q_text = pa.array(queries, pa.string())
    d_text = pa.array(pool, pa.string())
    counts = np.array([len(c) for c in clicked], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = np.array([i for c in clicked for i in c], np.int64)
    weights = 1.0 / np.arange(1, len(queries) + 1) ** 0.8  # Zipf-like popularity over a shuffled query list
    order = np.random.default_rng([seed, 1]).permutation(len(queries))
    p = np.empty(len(queries))
    p[order] = weights / weights.sum()
    for k, path in enumerate(paths):
        n = min(shard_rows, rows - k * shard_rows)
        rng = np.random.default_rng([seed, rows, k])
        q = rng.choice(len(queries), size=n, p=p)
        click = rng.random(n) < 0.5
        pick = flat[offsets[q] + rng.integers(0, 1 << 30, size=n) % counts[q]]
        doc = np.where(click, pick, rng.integers(0, len(pool), size=n))
        clicks = np.where(click, rng.integers(1, 6, size=n), 0)
        impressions = clicks + rng.integers(0, 3, size=n) + (clicks == 0)  # an unclicked row was shown
        table = pa.table({"query": q_text.take(pa.array(q)), "doc": d_text.take(pa.array(doc)),
                          "clicks": pa.array(clicks, pa.int32()), "impressions": pa.array(impressions, pa.int32())})
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, row_group_size=100_000)
        tmp.replace(path)
    return paths


def single_file(shards: list[Path], path: Path) -> Path:
    """The same rows as one Parquet file (the in-memory path reads one file), written a row group at a time."""
    import pyarrow.parquet as pq

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    writer = None
    for shard in shards:
        pf = pq.ParquetFile(shard)
        for batch in pf.iter_batches(batch_size=100_000):
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema)
            writer.write_batch(batch)
    assert writer is not None
    writer.close()
    tmp.replace(path)
    return path


def child(record: Path, args: list[str]) -> None:
    """In the measured process: note the wall time of every optimiser step, then run ``deepsem`` with ``args``."""
    import atexit

    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: stamps.append(time.time()))
    atexit.register(lambda: record.write_text(json.dumps(stamps)))
    from deepsem.cli import app

    app(args, prog_name="deepsem")


def measure(label: str, data: Path, rows: int, out: Path, steps: int, train_args: list[str],
            extra: list[str]) -> dict[str, object]:
    """One fresh training process on ``data``: peak RSS, time to first step, pairs/s after it."""
    record = out.with_suffix(".steps.json")
    record.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", str(record), "--", "train", str(data), "--out", str(out),
           "--clicks", "--columns", "query,doc,clicks", "--impressions", "impressions", "--max-steps", str(steps),
           "--no-resume", "--no-progress", *train_args, *extra]
    launched = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    stamps = json.loads(record.read_text()) if record.exists() else []
    batch = int(train_args[train_args.index("--batch-size") + 1]) if "--batch-size" in train_args else 128
    result: dict[str, object] = {"path": label, "rows": rows, "exit": code, "peak_rss_mb": usage.ru_maxrss / 1024,
                                 "steps": len(stamps)}
    if stamps:
        result["first_step_s"] = stamps[0] - launched
    if len(stamps) > 1:
        result["pairs_per_s"] = batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    if code != 0:
        result["error"] = output.strip().splitlines()[-1][:200] if output.strip() else ""
    return result


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(Path(sys.argv[i + 1]), sys.argv[sys.argv.index("--") + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,50M", help="rows of each click log (k, M suffixes)")
    parser.add_argument("--memory-sizes", default=None,
                        help="sizes to run the in-memory path on too (default: those up to 10M)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per run (--max-steps)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch/scale"))
    parser.add_argument("--shard-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--vocab-sample", type=int, default=200_000, help="pairs the stream learns its vocabulary "
                        "from (--vocab-sample)")
    parser.add_argument("--shuffle-buffer", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-args", default="--batch-size 128 --negatives in-batch",
                        help="further 'deepsem train' options, the same for every run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    memory_sizes = ({parse_size(s) for s in args.memory_sizes.split(",") if s.strip()}
                    if args.memory_sizes is not None else {s for s in sizes if s <= 10_000_000})
    train_args = [*args.train_args.split(), "--threads", str(args.threads)]
    results = []
    for rows in sizes:
        name = f"{rows:,}".replace(",", "_")
        t0 = time.perf_counter()
        shards = write_log(args.scratch / name, rows, args.shard_rows, args.seed, args.data_dir)
        print(f"{rows:,} rows: {len(shards)} shards ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        runs = args.scratch / "runs"
        results.append(measure("stream", args.scratch / name, rows, runs / f"stream-{name}", args.steps, train_args,
                               ["--vocab-sample", str(args.vocab_sample), "--shuffle-buffer",
                                str(args.shuffle_buffer)]))
        print(json.dumps(results[-1]), flush=True)
        if rows in memory_sizes:
            whole = single_file(shards, args.scratch / f"{name}.parquet")
            results.append(measure("in-memory", whole, rows, runs / f"memory-{name}", args.steps, train_args, []))
            print(json.dumps(results[-1]), flush=True)

    print(f"\n{'path':<10} {'rows':>12} {'peak RSS MB':>12} {'first step s':>13} {'pairs/s':>9}  status")
    for r in results:
        first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else "-"
        rate = f"{r['pairs_per_s']:.0f}" if "pairs_per_s" in r else "-"
        status = "ok" if r["exit"] == 0 else f"exit {r['exit']}: {r.get('error', '')}"
        print(f"{r['path']:<10} {r['rows']:>12,} {r['peak_rss_mb']:>12.0f} {first:>13} {rate:>9}  {status}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "steps": args.steps,
                                         "train_args": train_args, "results": results}, indent=1))


if __name__ == "__main__":
    main()
