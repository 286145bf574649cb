"""``deepsem embeddings train``: word vectors for initialising token embeddings."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.errors import fail
from deepsem.cli.options import (
    Seed,
    TokenizerName,
    out_file,
)

embeddings_app = typer.Typer(help="Word vectors (word2vec, fastText) for initialising token embeddings.",
                             no_args_is_help=True)


class VectorMethod(StrEnum):
    skipgram = "skipgram"
    cbow = "cbow"
    fasttext = "fasttext"


@embeddings_app.command("train")
def embeddings_train(
    corpus: Annotated[list[Path], typer.Argument(help="Text files, one text per line (a TSV/CSV line is used "
                      "whole unless --column picks fields).")],
    out: Annotated[Path, typer.Option(help="Vectors file to write (word2vec text format, .vec).",
                                      callback=out_file)],
    tokenizer: Annotated[TokenizerName, typer.Option(help="Tokens to learn vectors for: the tokenizer the model "
                         "will use (char for Chinese characters, word for jieba/English words).")
                         ] = TokenizerName.char,
    column: Annotated[list[int] | None, typer.Option(help="Tab-separated columns holding text (repeatable); "
                      "default: the whole line.")] = None,
    method: Annotated[VectorMethod, typer.Option(help="skipgram or cbow (word2vec), or fasttext (skip-gram "
                      "with character n-grams).")] = VectorMethod.skipgram,
    dim: Annotated[int, typer.Option(help="Vector size: use the model's --embedding-dim.", min=1)] = 128,
    window: Annotated[int, typer.Option(help="Context window.", min=1)] = 5,
    min_count: Annotated[int, typer.Option(help="Ignore tokens rarer than this.", min=1)] = 2,
    epochs: Annotated[int, typer.Option(help="Passes over the corpus.", min=1)] = 5,
    seed: Seed = 13,
    workers: Annotated[int, typer.Option(help="Worker threads (1 is deterministic).", min=1)] = 1,
) -> None:
    """Learn word vectors on your own corpus with gensim; pass them to 'deepsem train --pretrained'."""
    from deepsem.embeddings import TextCorpus, train_vectors
    from deepsem.fileio import regular_file
    from deepsem.text import build_tokenizer

    missing = [str(p) for p in corpus if not p.exists()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    for path in corpus:
        regular_file(path)  # a directory, FIFO or device: one clear error
    if tokenizer in (TokenizerName.subword, TokenizerName.trigram):
        fail("word vectors are learned for char or word tokens (the tokens of a recurrent tower)")
    tok = build_tokenizer(tokenizer.value, [], min_count=1)
    info = train_vectors(TextCorpus(corpus, column), out, tokenizer=tok, method=method.value, dim=dim, window=window,
                         min_count=min_count, epochs=epochs, seed=seed, workers=workers)
    typer.echo(f"{info.words} vectors of {info.dim} dimensions ({info.method}, {info.seconds:.1f} s) -> {out}")
