"""Load test of ``deepsem serve`` on loopback: requests/s and latency of POST /search (or POST /recommend) at
several concurrencies.

    python bench/serve.py --index runs/bench-search/100000-HNSW32 --concurrency 1 8 32 --duration 20
    python bench/serve.py --index runs/soak/index-100000 --backends torch onnx   # both backends, one run
    python bench/serve.py --recommender runs/recommend/lstm-peephole --concurrency 1 8 32 --duration 20

With ``--recommender`` each request is one ml-100k user's test-time history (its last 50 items, oldest first)
and k=10, the history's items excluded.

The server runs in its own process (``deepsem serve``); the load comes from ``wrk`` (Debian package ``wrk``)
with a Lua script that cycles through real queries (LCQMC test questions), one query per request, k=10.
Each concurrency level is bounded by ``--duration`` seconds after a short warm-up. Errors (non-2xx answers,
socket errors, timeouts) are counted and must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LUA = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
"""


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, script: Path, concurrency: int, duration: int) -> dict[str, float]:
    threads = min(2, concurrency)
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--latency", "--timeout", "5s",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        errors += sum(int(x) for x in socket.groups())
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"concurrency": concurrency, "requests": requests,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": to_ms(latency["50"]), "p99_ms": to_ms(latency["99"]), "errors": errors}


def serve_and_load(args: argparse.Namespace, what: list[str], url: str, script: Path, backend: str
                   ) -> tuple[list[dict], dict]:
    """Start ``deepsem serve`` with ``backend``, warm it up, run wrk at each concurrency; rows and /stats."""
    server = subprocess.Popen(
        [sys.executable, "-m", "deepsem.cli", "serve", *what, "--port", str(args.port), "--backend", backend,
         "--max-wait-ms", str(args.max_wait_ms), *args.server_args.split()],
        stdout=subprocess.DEVNULL, env={**os.environ})
    rows = []
    try:
        wait_ready(url)
        run_wrk(url, script, 4, 3)  # warm-up
        for c in args.concurrency:
            rows.append(run_wrk(url, script, c, args.duration))
            print(backend, rows[-1], flush=True)
        with urllib.request.urlopen(url + "/stats") as r:
            stats = json.loads(r.read())
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    return rows, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="an index built by deepsem (e.g. 100k docs)")
    parser.add_argument("--recommender", type=Path, help="a recommender model directory (POST /recommend)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--server-args", default="", help="more `deepsem serve` options, e.g. '--no-encoder-thread'")
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnx"],
                        help="serve with each backend in turn, in this run (e.g. torch onnx)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if (args.index is None) == (args.recommender is None):
        sys.exit("give --index or --recommender")
    if args.index is not None:
        lcqmc = (args.data_dir / "lcqmc/test.tsv").read_text("utf-8").splitlines()
        queries = list(dict.fromkeys(line.split("\t")[0] for line in lcqmc))[:2000]
        bodies = [json.dumps({"queries": q, "k": 10}, ensure_ascii=False) for q in queries]
        path, what = "/search", ["--index", str(args.index)]
    else:
        from deepsem.data.interactions import load_movielens, split_sequences

        split = split_sequences(load_movielens(args.data_dir / "movielens" / "ml-100k"))
        bodies = [json.dumps({"history": [split.items[i] for i in split.history(u, "test")[-50:]], "k": 10})
                  for u in split.examples("test")[0]]
        path, what = "/recommend", ["--model", str(args.recommender)]
    script = Path(tempfile.mkdtemp()) / "load.lua"
    script.write_text(LUA % (", ".join("[[" + b + "]]" for b in bodies), path), "utf-8")
    url = f"http://127.0.0.1:{args.port}"
    results = {}
    for backend in args.backends:
        rows, stats = serve_and_load(args, what, url, script, backend)
        results[backend] = {"rows": rows, "stats": stats}
        if args.index is not None:
            print(f"\nPOST /search (k=10, one query per request) over {stats['index']['documents']:,} documents "
                  f"({stats['index']['factory']}), backend {backend}, {args.duration} s per level, server and wrk "
                  "on the same 2 cores")
        else:
            print(f"\nPOST /recommend (k=10, one history of <= 50 items per request), {stats['recommender']}, "
                  f"backend {backend}, {args.duration} s per level, server and wrk on the same 2 cores")
        print(f"{'concurrency':>11} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for r in rows:
            print(f"{r['concurrency']:>11} {r['rps']:>11.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['errors']:>7}")
        print(f"micro-batching: {stats['batching']}")
    if len(args.backends) > 1:
        base = results[args.backends[0]]["rows"]
        for backend in args.backends[1:]:
            ratios = [f"c={r['concurrency']}: {r['rps'] / b['rps']:.2f}x"
                      for r, b in zip(results[backend]["rows"], base, strict=True)]
            print(f"requests/s of {backend} against {args.backends[0]}: {', '.join(ratios)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results if len(results) > 1 else results[args.backends[0]], indent=2),
                             encoding="utf-8")


if __name__ == "__main__":
    main()
