"""``deepsem diagnose gradients``: the gradient diagnostics of :mod:`deepsem.tools.diagnose`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.options import (
    Progress,
    Seed,
    out_dir,
)

diagnose_app = typer.Typer(help="Look inside training: gradients through time.", no_args_is_help=True)


@diagnose_app.command("gradients")
def diagnose_gradients(
    out: Annotated[Path, typer.Option(help="Folder for the plot (gradient_norms.png), table and JSON.",
                                      callback=out_dir)],
    cell: Annotated[list[str] | None, typer.Option(help="Cells to compare (repeatable): rnn, gru, lstm, "
                    "lstm-peephole, lstm-coupled. Default: rnn, gru, lstm.")] = None,
    task: Annotated[str, typer.Option(help="adding (the adding problem) or copy (copy the first token).")
                    ] = "adding",
    length: Annotated[int, typer.Option(help="Sequence length (the distance the gradient must travel).", min=1)
                      ] = 100,
    steps: Annotated[int, typer.Option(help="Training steps per cell.", min=1)] = 1000,
    hidden: Annotated[int, typer.Option(help="Hidden size.", min=1)] = 64,
    seed: Seed = 0,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (these small recurrences run fastest on 1).",
                                         min=1)] = 1,
    progress: Progress = None,
) -> None:
    """Train cells on a long-range synthetic task and plot ||dL/dh_t|| against the distance from the end."""
    from deepsem.progress import progress_enabled
    from deepsem.tools.diagnose import diagnose_gradients as run
    from deepsem.tools.diagnose import table_markdown

    report = run(cells=tuple(cell or ("rnn", "gru", "lstm")), task=task, length=length, steps=steps,
                 hidden=hidden, seed=seed, out_dir=out, threads=threads, progress=progress_enabled(progress))
    typer.echo(table_markdown(report.results))
    typer.echo(f"plot: {report.png}\ntable: {report.table}")
