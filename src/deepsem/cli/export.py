"""``deepsem export``: a trained model's towers (or re-ranker) as ONNX files another runtime runs
(:mod:`deepsem.deploy`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.errors import fail
from deepsem.cli.options import existing_dir, out_file


class Format(StrEnum):
    onnx = "onnx"


class Quantize(StrEnum):
    int8 = "int8"


def export(
    model: Annotated[Path, typer.Option(help="Model directory (two-tower, classifier, recommender or re-ranker).",
                                        callback=existing_dir)],
    out: Annotated[Path, typer.Option(help="The ONNX file to write; the other parts, the tokenizer and (for a "
                                      "recommender) the item vectors go beside it, named after it.",
                                      callback=out_file)],
    format: Annotated[Format, typer.Option(help="Output format.")] = Format.onnx,
    quantize: Annotated[Quantize | None, typer.Option(help="int8: onnxruntime's dynamic quantisation (int8 "
                        "weights, activations quantised on the fly).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files already at --out and beside it (refused "
                         "otherwise, before anything is written).")] = False,
) -> None:
    """Export the towers as ONNX (ids and lengths in, the final normalised vector out; a re-ranker: query and
    document ids in, the relevance logit and probability out), check them against the PyTorch model on random
    inputs, and print what was written."""
    from deepsem.deploy.export import check_export, export_onnx
    from deepsem.tasks import load

    held = load(model)
    try:
        written = export_onnx(held, out, quantize=None if quantize is None else quantize.value, overwrite=overwrite)
    except FileExistsError as exc:
        fail(f"{exc} (--overwrite replaces them)")
    for path in written:
        typer.echo(f"wrote {path}")
    for part, (max_diff, min_cosine) in check_export(held, out).items():
        typer.echo(f"{part}: onnxruntime against torch on random inputs: max |diff| {max_diff:.2e}, "
                   f"min cosine {min_cosine:.6f}")
