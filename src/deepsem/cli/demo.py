"""``deepsem demo``: the shipped Tatoeba demo (:mod:`deepsem.tools.demo`), then its search page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.options import (
    Progress,
    above_zero,
    out_dir,
)


def demo(
    out: Annotated[Path | None, typer.Option(help="Keep the model and index directories here (default: a "
                   "temporary directory).", callback=out_dir)] = None,
    serve: Annotated[bool, typer.Option(help="Serve the search page after training (--no-serve stops after "
                     "the example searches).")] = True,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.", min=0, max=65535)] = 8000,
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes.", callback=above_zero)] = 1.8,
    progress: Progress = None,
) -> None:
    """Train LSTM-DSSM on the shipped Tatoeba English–Chinese pairs, index every sentence, serve a search page."""
    from deepsem.tools.demo import run_demo

    _, index_dir, _ = run_demo(out=out, minutes=minutes, progress=progress)
    if serve:
        from deepsem.index import Index
        from deepsem.serve import create_app, run

        typer.echo(f"\nsearch page: http://{host}:{port}/   (Ctrl-C to stop)")
        run(create_app(Index.load(index_dir)), host=host, port=port)
