"""Time deepsem's LSTM against torch.nn.LSTM on the same inputs, in the same run.

Variants: ``torch.nn.LSTM``, ours without options (torch's fused kernel on our parameters), ours with
peepholes and ours with coupled input/forget gates (both on the hand-written backward through time).
Inference is a forward under ``torch.no_grad()``; training is forward plus backward of ``output.sum()``
(the input requires grad, as an embedding output would). Each figure is the median over ``--repeats`` runs
after ``--warmup`` runs; the ratio is against torch.nn.LSTM measured in the same run. The variants are
interleaved repeat by repeat so that a change of machine load hits all of them alike; "paired" is the
median over repeats of (this variant's time / torch's time in the same repeat), steadier than the ratio
of medians when other processes share the CPU.

    python bench/lstm.py --batch 256 --length 32 --input 128 --hidden 256 --repeats 20

``--modes inference`` times inference alone (a quicker run; the training columns show "-").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deepsem.nn.lstm import LSTM


def _variants(args: argparse.Namespace) -> dict[str, nn.Module]:
    common = {"num_layers": args.layers, "bidirectional": args.bidirectional}
    reference = nn.LSTM(args.input, args.hidden, **common)
    variants: dict[str, nn.Module] = {"torch.nn.LSTM": reference}
    for name, options in (
        ("ours plain (fused)", {}),
        ("ours peephole", {"peephole": True}),
        ("ours coupled", {"coupled": True}),
        ("ours peephole+coupled", {"peephole": True, "coupled": True}),
    ):
        module = LSTM(args.input, args.hidden, **common, **options)
        module.load_state_dict(reference.state_dict(), strict=False)
        if options.get("peephole"):
            with torch.no_grad():
                for pname, param in module.named_parameters():
                    if pname.startswith("weight_c"):
                        param.uniform_(-0.1, 0.1)
        variants[name] = module
    return variants


def _steps(module: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    def inference() -> None:
        with torch.no_grad():
            module(x)

    def training() -> None:
        out, _ = module(x)
        out.sum().backward()

    return {"inference": inference, "training": training}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--input", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", choices=["inference", "training"], default=["inference", "training"],
                        help="what to time (default both); the other columns then show '-'")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    variants = _variants(args)
    x = torch.randn(args.length, args.batch, args.input, requires_grad=True)
    times: dict[tuple[str, str], list[float]] = {}
    for mode in args.modes:
        steps = {name: _steps(module, x)[mode] for name, module in variants.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        for _ in range(args.repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times.setdefault((name, mode), []).append(time.perf_counter() - start)
            for module in variants.values():
                module.zero_grad(set_to_none=True)
            x.grad = None

    medians = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    rows = []
    for name in variants:
        row: dict[str, object] = {"variant": name}
        for mode in args.modes:
            ms = medians[(name, mode)]
            row[f"{mode}_ms"] = round(ms, 3)
            row[f"{mode}_ratio"] = round(ms / medians[("torch.nn.LSTM", mode)], 3)
            pairs = zip(times[(name, mode)], times[("torch.nn.LSTM", mode)], strict=True)
            row[f"{mode}_paired_ratio"] = round(statistics.median(ours / ref for ours, ref in pairs), 3)
            row[f"{mode}_min_ms"] = round(min(times[(name, mode)]) * 1e3, 3)
            row[f"{mode}_all_ms"] = [round(v * 1e3, 3) for v in times[(name, mode)]]
        rows.append(row)

    config = {k: v for k, v in vars(args).items() if k != "json"}
    config["threads"] = torch.get_num_threads()
    print(
        f"batch {args.batch}, length {args.length}, input {args.input}, hidden {args.hidden}, layers "
        f"{args.layers}{', bidirectional' if args.bidirectional else ''}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats}"
    )
    header = f"{'variant':<24}{'infer ms':>10}{'ratio':>8}{'paired':>8}{'train ms':>11}{'ratio':>8}{'paired':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [f"{row['variant']:<24}"]
        for mode, width in (("inference", 10), ("training", 11)):
            if mode in args.modes:
                cells.append(f"{row[f'{mode}_ms']:>{width}.2f}{row[f'{mode}_ratio']:>8.3f}"
                             f"{row[f'{mode}_paired_ratio']:>8.3f}")
            else:
                cells.append(f"{'-':>{width}}{'-':>8}{'-':>8}")
        print("".join(cells))
    result: dict[str, object] = {
        "config": config,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "results": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
