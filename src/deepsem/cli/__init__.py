"""The ``deepsem`` command: train, evaluate, encode, index, search, serve, export, classify, recommend, demo.

One module per command group (:mod:`.matching`: train / evaluate / encode; :mod:`.index`: index ... and search;
:mod:`.serve`; :mod:`.export`; :mod:`.classify`; :mod:`.recommend`; :mod:`.embeddings`; :mod:`.diagnose`;
:mod:`.demo`; :mod:`.distill`), the options they share in :mod:`.options`, and every command under the one error
handler of :mod:`.errors`. The commands parse options and print; the work is done by the library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import typer

from deepsem.cli import (
    classify,
    demo,
    diagnose,
    distill,
    embeddings,
    export,
    index,
    matching,
    negatives,
    recommend,
    rerank,
    serve,
)
from deepsem.cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USER, DeepsemGroup
from deepsem.cli.options import (
    MAX_LINE_BYTES,
    Encoder,
    Loss,
    Negatives,
    Pooling,
    RecommendNegatives,
    RecurrentEncoder,
    Side,
    TokenizerName,
)

app = typer.Typer(
    name="deepsem",
    help="Learn what text means from weak signals: LSTM-DSSM two-tower models for search and matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=DeepsemGroup,
)
# the top-level commands, in the order `deepsem --help` lists them, then the command groups
for command in (matching.train, matching.evaluate, matching.encode, index.search, serve.serve, export.export,
                demo.demo):
    app.command()(command)
for name, group in (("index", index.index_app), ("classify", classify.classify_app),
                    ("embeddings", embeddings.embeddings_app), ("diagnose", diagnose.diagnose_app),
                    ("recommend", recommend.recommend_app), ("rerank", rerank.rerank_app),
                    ("negatives", negatives.negatives_app), ("distill", distill.distill_app)):
    app.add_typer(group, name=name)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console entry point (``deepsem``, ``python -m deepsem``): run the app under the error handler."""
    app(args=argv)
    sys.exit(0)  # pragma: no cover - app() always exits


__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_USER", "MAX_LINE_BYTES", "Encoder", "Loss", "Negatives",
           "Pooling", "RecommendNegatives", "RecurrentEncoder", "Side", "TokenizerName", "app", "main"]
