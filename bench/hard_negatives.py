"""Hard negatives and distillation on BQ: mine negatives with a trained BQ two-tower model, then train the README's
default two-tower model with the same budget with in-batch negatives, with in-batch + mined hard negatives, and
(``--teacher DIR``, a BQ cross-encoder) distilled from the teacher, alone and with the hard negatives, in one run;
report BQ dev accuracy and Spearman of each.

    python bench/hard_negatives.py --data-dir ../shared/datasets --minutes 15            # full scale
    python bench/hard_negatives.py --data-dir ../shared/datasets --minutes 1             # a quick check
    python bench/hard_negatives.py --epochs 3 --teacher runs/rerank-bq --runs in-batch,hard,distill,hard+distill

``--epochs N`` gives every run the same number of steps instead of the same minutes (a fair budget on a shared
machine, and the one that says what each method learns per example; the minutes each took are reported).

Every step is the command a user runs (``deepsem negatives mine``, ``deepsem train``, ``deepsem evaluate``), in
a subprocess, one after the other: run it with the machine to itself. Both trainings use the CLI's defaults (the
README's model: char tokens, peephole BiLSTM 2 x 128, last+max pooling, pointwise + in-batch softmax loss) and
``--max-minutes``; the hard run adds ``--negatives hard --hard-negatives FILE --num-negatives K`` (and
``--remine-every N`` when given) and nothing else; ``--train-args '...'`` adds the same options to every run (for
example ``--pretrained zhchar.vec --ema-decay 0.999``).
The best epoch of each is chosen on bq/dev (as ``deepsem train --dev`` always does) and scored there with its
threshold. Scratch files go under ``--work`` (default /work/scratch/hardneg); the results, as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def deepsem(*args: str, log: Path) -> tuple[str, float]:
    """Run ``python -m deepsem ARGS``; its output (also appended to ``log``) and its wall time in seconds."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deepsem", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ deepsem {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode:
        raise SystemExit(f"deepsem {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout, seconds


def evaluate(model: Path, dev: Path, log: Path) -> dict[str, float]:
    out, _ = deepsem("evaluate", "--model", str(model), str(dev), "--json", log=log)
    return json.loads(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    bq = args.data_dir / "bq"
    train, dev = bq / "train.tsv", bq / "dev.tsv"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    negatives = work / "bq-negatives.jsonl"
    mine = ["negatives", "mine", str(train), "--model", str(args.miner), "--out", str(negatives), "--source",
            args.source, "--per-query", str(args.per_query), "--depth", str(args.depth), "--skip-top",
            str(args.skip_top)]
    if args.margin is not None:
        mine += ["--margin", str(args.margin)]
    if args.reuse_negatives and negatives.exists():  # mined by an earlier run with these settings
        mined_line, mine_seconds = f"reused {negatives}", 0.0
    else:
        mined_line, mine_seconds = deepsem(*mine, log=log)
    budget = ["--epochs", str(args.epochs)] if args.epochs else ["--max-minutes", str(args.minutes)]
    common = [str(train), "--dev", str(dev), *budget, "--no-resume", "--no-progress", "--seed", str(args.seed),
              "--device", args.device, *shlex.split(args.train_args)]
    hard = ["--negatives", "hard", "--hard-negatives", str(negatives), "--num-negatives", str(args.num_negatives),
            *(["--remine-every", str(args.remine_every)] if args.remine_every else [])]
    distill = [*(x for t in args.teacher or [] for x in ("--teacher", str(t))), "--distill-weight",
               str(args.distill_weight)]
    variants = {"in-batch": [], "hard": hard, "distill": distill, "hard+distill": hard + distill}
    wanted = args.runs.split(",")
    if any(name not in variants for name in wanted) or (args.teacher is None and any("distill" in n for n in wanted)):
        raise SystemExit(f"--runs takes {', '.join(variants)} (the distilled ones with --teacher)")
    runs: dict[str, Any] = {}
    for name, extra in ((n, variants[n]) for n in wanted):
        out = work / "runs" / name
        _, seconds = deepsem("train", *common, "--out", str(out), *extra, log=log)
        metrics = evaluate(out, dev, log)
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        result = json.loads((out / "training" / "result.json").read_text(encoding="utf-8"))
        runs[name] = {"accuracy": round(metrics["accuracy"], 4),
                      "spearman": round(metrics["spearman"], 4),
                      "f1": round(metrics["f1"], 4), "roc_auc": round(metrics["roc_auc"], 4),
                      "steps": result.get("steps"), "stopped": result.get("stopped"),
                      "best_step": result.get("best_step"), "train_seconds": round(seconds, 1),
                      "negatives": config["training"]["negatives"]}
        print(f"{name}: {runs[name]}", flush=True)
    return {"minutes": None if args.epochs else args.minutes, "epochs": args.epochs, "device": args.device,
            "miner": str(args.miner), "train_args": args.train_args,
            "teacher": None if args.teacher is None else [str(t) for t in args.teacher], "mined": mined_line.strip(),
            "mine_seconds": round(mine_seconds, 1),
            "mining": {"source": args.source, "per_query": args.per_query, "depth": args.depth,
                       "skip_top": args.skip_top, "margin": args.margin, "num_negatives": args.num_negatives,
                       "remine_every": args.remine_every},
            "cpu": platform.processor() or platform.machine(), "runs": runs,
            "gain": {name: {k: round(runs[name][k] - runs["in-batch"][k], 4) for k in ("accuracy", "spearman")}
                     for name in runs if name != "in-batch" and "in-batch" in runs}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each run")
    parser.add_argument("--epochs", type=int, default=None, help="a budget of epochs instead of minutes")
    parser.add_argument("--teacher", type=Path, nargs="+", default=None, help="a BQ cross-encoder to distil (several: "
                        "an ensemble, the mean of their scores)")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--reuse-negatives", action="store_true", help="keep the negatives file of an earlier run "
                        "under --work (same settings) instead of mining again")
    parser.add_argument("--runs", default="in-batch,hard", help="which of in-batch,hard,distill,hard+distill")
    parser.add_argument("--miner", type=Path, default=Path("/work/scratch/bq"), help="the BQ two-tower model that "
                        "mines the negatives")
    parser.add_argument("--work", type=Path, default=Path("/work/scratch/hardneg"))
    parser.add_argument("--source", default="both", choices=("dense", "bm25", "both"))
    parser.add_argument("--per-query", type=int, default=8)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--skip-top", type=int, default=3)
    parser.add_argument("--margin", type=float, default=0.0, help="negative to turn it off")
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--remine-every", type=int, default=None, help="the hard run re-mines every N epochs")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--train-args", default="", help="more `deepsem train` options for every run, e.g. "
                        "'--pretrained zhchar.vec --ema-decay 0.999'")
    parser.add_argument("--device", default="cpu", help="where every run trains (cpu, cuda): deepsem train --device")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    if args.margin is not None and args.margin < 0:
        args.margin = None
    report = run(args)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
