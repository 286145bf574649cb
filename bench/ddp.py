"""One process against two (torchrun) on BQ: wall time, pairs/s, dev accuracy and the loss curves side by side.

    python bench/ddp.py                                   # full scale: 20,000 pairs, 1 epoch (the machine alone)
    python bench/ddp.py --pairs 800 --dev-pairs 200 --epochs 1 --small --out /tmp/ddp.png --json /tmp/ddp.json

Three runs of ``deepsem train`` on the first ``--pairs`` pairs of ``bq/train.tsv`` (dev: the first ``--dev-pairs``
of ``bq/dev.tsv``), with the same global batch, seed and settings, each as a user launches it:

- ``1 process, 1 thread``:   ``deepsem train ... --threads 1``
- ``2 processes, 1 thread each``: ``torchrun --standalone --nproc-per-node 2 -m deepsem train ... --threads 1``
- ``1 process, 2 threads``:  ``deepsem train ... --threads 2``, the fair single-machine reference (same cores)

It measures the command line only (no deepsem import here): the wall time of each command, its training time and
pairs/s (``result.json``: the loop's seconds, dev evaluations included, which rank 0 runs alone), the final and best
dev accuracy, and plots each run's ``metrics.jsonl`` (training loss and dev accuracy against the global step: the
same global batches in every run; dropout differs, as each rank draws its own masks) to ``--out`` (default
``docs/ddp-loss-curves.png``). ``--steps N`` stops each run after N steps (``deepsem train --max-steps``); no run
stops early (``--patience`` 1000000), so all train the same steps. Data and runs go to ``--work`` (default
``/work/scratch/ddp``, never committed). Timings need the machine to itself.
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
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "1 process, 1 thread": {"processes": 1, "threads": 1},
    "2 processes, 1 thread each": {"processes": 2, "threads": 1},
    "1 process, 2 threads": {"processes": 1, "threads": 2},
}
#: a model that trains a BQ epoch in seconds, to prove the script works (--small)
SMALL = ["--embedding-dim", "16", "--hidden", "16", "--dim", "16", "--layers", "1"]


def head(source: Path, target: Path, n: int) -> int:
    """The first ``n`` lines of ``source`` written to ``target``; how many there were."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(source, encoding="utf-8") as fh:
        for line in fh:
            if len(lines) == n:
                break
            lines.append(line)
    target.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def command(processes: int, threads: int, train: Path, dev: Path, out: Path, args: argparse.Namespace) -> list[str]:
    launch = [sys.executable, "-m", "deepsem"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "deepsem"]
    cmd = [*launch, "train", str(train), "--dev", str(dev), "--out", str(out), "--no-resume", "--no-progress",
           "--threads", str(threads), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
           "--epochs", str(args.epochs), "--eval-every", str(args.eval_every), "--patience", "1000000"]
    if args.steps:
        cmd += ["--max-steps", str(args.steps)]
    return cmd + (SMALL if args.small else []) + args.extra


def records(run: Path) -> list[dict[str, Any]]:
    path = run / "training" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def measure(name: str, setting: dict[str, int], train: Path, dev: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = args.work / "runs" / name.replace(" ", "-").replace(",", "")
    shutil.rmtree(out, ignore_errors=True)
    cmd = command(setting["processes"], setting["threads"], train, dev, out, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(setting["threads"])}
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{name}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads((out / "training" / "result.json").read_text(encoding="utf-8"))
    history = records(out)
    dev_key = f"dev_{result['metric']}"
    evaluated = [r for r in history if dev_key in r]
    return {
        "name": name, **setting, "command": " ".join(cmd[1:]), "wall_seconds": round(wall, 1),
        "train_seconds": round(result["seconds"], 1), "steps": result["steps"], "stopped": result["stopped"],
        "pairs_per_second": round(result["steps"] * args.batch_size / result["seconds"], 1),
        "evaluations": len(evaluated), "metric": result["metric"],
        "final_dev": evaluated[-1][dev_key] if evaluated else None, "best_dev": result["best_metric"],
        "curve": [{"step": r["step"], "train_loss": r["train_loss"], dev_key: r.get(dev_key)} for r in history],
        "stdout": done.stdout.strip().splitlines()[-3:],
    }


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for run, style in zip(runs, ("o-", "s--", "^:"), strict=False):
        steps = [p["step"] for p in run["curve"]]
        left.plot(steps, [p["train_loss"] for p in run["curve"]], style, label=run["name"], markersize=4)
        key = f"dev_{run['metric']}"
        dev = [(p["step"], p[key]) for p in run["curve"] if p.get(key) is not None]
        right.plot([s for s, _ in dev], [v for _, v in dev], style, label=run["name"], markersize=4)
    left.set(xlabel="global step (same global batches in every run)", ylabel="training loss (mean since last eval)",
             title="training loss")
    right.set(xlabel="global step", ylabel=f"dev {runs[0]['metric']}", title=f"dev {runs[0]['metric']}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20_000, help="training pairs: the first N of bq/train.tsv")
    parser.add_argument("--dev-pairs", type=int, default=2_000, help="dev pairs: the first N of bq/dev.tsv")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="stop each run after N steps (--max-steps)")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch of every run")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations "
                        "(default: about 10 a run)")
    parser.add_argument("--small", action="store_true", help="a tiny model, to check that the script works")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/bq"), help="folder with train.tsv "
                        "and dev.tsv (default: as the other benchmarks, from the repository root)")
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/ddp"), help="scratch: data and runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ddp-loss-curves.png", help="the PNG")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ddp.json", help="raw results")
    parser.add_argument("extra", nargs="*", help="more `deepsem train` options for every run (after --)")
    args = parser.parse_args()
    if args.steps and "--max-steps" not in subprocess.run([sys.executable, "-m", "deepsem", "train", "--help"],
                                                          capture_output=True, text=True, check=False).stdout:
        sys.exit("--steps needs `deepsem train --max-steps`, which this deepsem lacks: give --epochs instead")
    n = head(args.data / "train.tsv", args.work / f"train-{args.pairs}.tsv", args.pairs)
    n_dev = head(args.data / "dev.tsv", args.work / f"dev-{args.dev_pairs}.tsv", args.dev_pairs)
    steps = args.steps or args.epochs * -(-n // args.batch_size)
    args.eval_every = args.eval_every or max(1, steps // 10)
    runs = [measure(name, setting, args.work / f"train-{args.pairs}.tsv", args.work / f"dev-{args.dev_pairs}.tsv",
                    args) for name, setting in RUNS.items()]
    doc = {
        "what": "deepsem train: 1 process vs torchrun with 2 processes, same global batch and seed",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": metadata.version("torch"), "deepsem": metadata.version("deepsem")},
        "pairs": n, "dev_pairs": n_dev, "batch_size": args.batch_size, "seed": args.seed, "epochs": args.epochs,
        "max_steps": args.steps, "eval_every": args.eval_every, "small_model": args.small, "extra": args.extra,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(runs, args.out, f"BQ, first {n} pairs, global batch {args.batch_size}, seed {args.seed}")
    print(f"\n{'run':<28} {'wall s':>7} {'train s':>8} {'pairs/s':>8} {'steps':>6} {'final dev':>10} {'best dev':>9}")
    for r in runs:
        print(f"{r['name']:<28} {r['wall_seconds']:>7} {r['train_seconds']:>8} {r['pairs_per_second']:>8} "
              f"{r['steps']:>6} {r['final_dev'] or float('nan'):>10.4f} {r['best_dev'] or float('nan'):>9.4f}")
    print(f"plot: {args.out}\nraw: {args.json}")


if __name__ == "__main__":
    main()
