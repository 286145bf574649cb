"""``deepsem negatives mine``: hard negatives for training pairs, from a two-tower model's ranking and BM25."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from deepsem.cli.options import SkipBadRows, choices, data_file, pair_columns, vector_model
from deepsem.data.hard_negatives import SAMPLING, SOURCES

negatives_app = typer.Typer(help="Hard negatives for 'deepsem train --negatives hard': mine them from a model's "
                            "ranking of the training documents and from BM25.", no_args_is_help=True)


Source: Any = choices("Source", SOURCES)
Sampling: Any = choices("Sampling", SAMPLING)


@negatives_app.command("mine")
def mine(
    data: Annotated[Path, typer.Argument(help="Training pairs (TSV/CSV/JSONL/Parquet: text_a, text_b[, label]): "
                                         "negatives are mined for the text_a of every positive pair among the "
                                         "distinct text_b.", callback=data_file)],
    model: Annotated[Path, typer.Option(help="Two-tower model directory: ranks the dense candidates; its cosine "
                                        "is the score of every candidate (and what --margin compares).")],
    out: Annotated[Path, typer.Option(help="The JSONL file to write (atomically): a header line, then per query "
                                      "its positives and negatives with source, rank and score.")],
    source: Annotated[Source, typer.Option(help="Candidates from the model's ranking (dense), BM25, or both "
                                           "(interleaved by rank).")] = Source.both,
    per_query: Annotated[int, typer.Option(help="Negatives kept per query.", min=1)] = 8,
    depth: Annotated[int, typer.Option(help="Deepest rank considered (ranks counted without the query's known "
                                       "positives).", min=1)] = 50,
    skip_top: Annotated[int, typer.Option(help="Skip this many top ranks first (unlabelled positives sit "
                                          "there).", min=0)] = 0,
    margin: Annotated[float | None, typer.Option(help="Drop a candidate whose cosine is above the query's lowest "
                                                 "positive cosine minus this (0: never above a positive).",
                                                 min=0)] = None,
    max_score: Annotated[float | None, typer.Option(help="Drop a candidate whose cosine is above this.")] = None,
    sampling: Annotated[Sampling, typer.Option(help="Keep the best ranked (top) or a seeded random sample of the "
                                               "window.")] = Sampling.top,
    seed: Annotated[int, typer.Option(help="Seed of --sampling random.")] = 13,
    columns: Annotated[str, typer.Option(help="Columns of text_a,text_b,label by index or header name; "
                                         "'-' for label means every pair is a positive.")] = "0,1,2",
    skip_bad_rows: SkipBadRows = False,
) -> None:
    """Mine hard negatives for each training query: top ranks minus its known positives, in a rank window, under
    a margin; written to a file for 'deepsem train --negatives hard --hard-negatives FILE'."""
    from deepsem.data.hard_negatives import MiningSettings, write_hard_negatives
    from deepsem.index.negatives import mine_hard_negatives
    from deepsem.tasks import load

    if depth <= skip_top:
        raise typer.BadParameter(f"--depth ({depth}) must be above --skip-top ({skip_top})", param_hint="'--depth'")
    if out.is_dir():
        raise typer.BadParameter(f"{out}: is a folder; give a file name", param_hint="'--out'")
    settings = MiningSettings(per_query=per_query, depth=depth, skip_top=skip_top, margin=margin,
                              max_score=max_score, sampling=sampling.value, seed=seed)
    semantic = vector_model(load(model), model, "mine negatives")
    mined = mine_hard_negatives(data, semantic, source=source.value, settings=settings,
                                columns=pair_columns(columns), skip_bad_rows=skip_bad_rows)
    mined.model = str(model)
    write_hard_negatives(out, mined)
    s = mined.stats
    typer.echo(f"{s['negatives']} negatives for {s['with_negatives']} of {s['queries']} queries ({source.value}, "
               f"ranks {skip_top + 1}-{depth}; dropped by the margin {s['dropped_by_margin']}, by --max-score "
               f"{s['dropped_by_max_score']}) -> {out}")
