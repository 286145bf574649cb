"""``deepsem index ...`` (build and change a vector index) and ``deepsem search``."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from deepsem.index import Index

from deepsem.cli.errors import fail
from deepsem.cli.options import (
    Backend,
    BackendName,
    EncodePrecision,
    IndexDir,
    OnnxFile,
    PrecisionName,
    Progress,
    RerankOnnxFile,
    backend_kwargs,
    check_precision,
    corpus_source,
    data_file,
    out_dir,
    rerank_kwargs,
    vectors_source,
)


class StoreName(enum.StrEnum):
    """Where an index keeps its vectors (the encoder's engine is ``--backend``, another option)."""

    faiss = "faiss"
    qdrant = "qdrant"


index_app = typer.Typer(help="Build and change a vector index (Faiss + document store + model).",
                        no_args_is_help=True)


def load_index(path: Path, **backend: Any) -> Index:
    """The index at ``path``; ``backend`` / ``onnx``: how its model answers (:meth:`Index.load`)."""
    from deepsem.index import Index

    return Index.load(path, **backend)


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Model directory whose document tower encodes the corpus.")],
    corpus: Annotated[Path, typer.Option(help="Documents: JSONL ({id, text, ...metadata}), TSV/CSV with a "
                      "header (id, text, ...), Parquet, or a text file with one document per line; or a corpus in "
                      "shards: a folder or a quoted glob pattern of such files, read in sorted order.",
                      callback=corpus_source)],
    index: Annotated[Path, typer.Option(help="Index directory to write (replaced atomically).",
                                        callback=out_dir)],
    factory: Annotated[str, typer.Option(help="Faiss factory string: Flat (exact), HNSW32, IVF4096,Flat, "
                       "IVF1024,PQ32 ...")] = "Flat",
    id_field: Annotated[str, typer.Option(help="Column / key holding the document id.")] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding the document text.")] = "text",
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed documents (counted).")] = False,
    check_recall: Annotated[bool, typer.Option(help="Report recall@10 of the index against exact search on "
                            "a sample of 200 documents used as queries.")] = False,
    search_params: Annotated[str | None, typer.Option(help="Faiss search parameters kept with the index, e.g. "
                             "'efSearch=256' (HNSW) or 'nprobe=64' (IVF); default efSearch=128 / nprobe=32.")
                             ] = None,
    vectors: Annotated[Path | None, typer.Option(help="Precomputed document vectors (.npy from `deepsem encode "
                       "--side doc`, one row per document in corpus order), or the folder `deepsem encode` wrote "
                       "for a corpus in shards (or its manifest): skips encoding; checked against the corpus.",
                       callback=vectors_source)] = None,
    lexical: Annotated[bool, typer.Option(help="Also build a BM25 index (CJK characters, Latin words) for "
                       "lexical and hybrid search; hybrid becomes the index's default mode.")] = False,
    hybrid_weight: Annotated[float, typer.Option(help="The cosine's share of the hybrid score (the rest is "
                             "BM25 scaled by the query's best BM25 score).", min=0.0, max=1.0)] = 0.5,
    progress: Progress = None,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
    store: Annotated[StoreName | None, typer.Option(help="Where the vectors live: faiss (a file in the index "
                     "directory) or qdrant (a Qdrant collection; needs --qdrant-url or --qdrant-path). Default: "
                     "qdrant when one of those is given, else faiss.", case_sensitive=False)] = None,
    qdrant_url: Annotated[str | None, typer.Option(help="A Qdrant server or cluster, e.g. http://localhost:6333, "
                          "for the vectors. Its API key, if it needs one, is read from the environment variable "
                          "QDRANT_API_KEY (never from the command line).")] = None,
    qdrant_path: Annotated[Path | None, typer.Option(help="A directory for Qdrant's embedded local mode (no "
                           "server; one process at a time; for small corpora and tests).")] = None,
    collection: Annotated[str | None, typer.Option(help="The Qdrant alias that names the index's live collection "
                          "(each build makes a new collection ALIAS-<12 hex> and moves the alias onto it); default "
                          "deepsem-<index directory name>.")] = None,
) -> None:
    """Encode every document of a corpus and index the vectors."""
    import time

    from deepsem.index import Index, QdrantTarget
    from deepsem.progress import progress_enabled
    from deepsem.tasks import load

    qdrant = _qdrant_target(store, qdrant_url, qdrant_path, collection, factory, search_params)
    t0 = time.perf_counter()
    how = backend_kwargs(backend, onnx)
    encoder = model if how["backend"] == "torch" else load(model, **how)
    # the library reads the .npy itself (memory-mapped, no pickle) and checks its shape, dtype and values
    built = Index.build(encoder, corpus, index, factory, id_field=id_field, text_field=text_field,
                        skip_bad_rows=skip_bad_rows, vectors=vectors, search_params=search_params,
                        progress=progress_enabled(progress), lexical=lexical, hybrid_weight=hybrid_weight,
                        qdrant=None if qdrant is None else QdrantTarget(**qdrant))
    where = factory if qdrant is None else f"Qdrant collection {built.stats()['qdrant']['collection']}"
    typer.echo(f"indexed {len(built):,} documents with {where} in {time.perf_counter() - t0:.1f} s -> {index}")
    if check_recall:
        typer.echo(f"recall@10 against exact search: {built.check_recall(k=10):.4f}")


def _qdrant_target(store: StoreName | None, url: str | None, path: Path | None, collection: str | None,
                   factory: str, search_params: str | None) -> dict[str, Any] | None:
    """The Qdrant target the build options name (None: a Faiss index), checked; a contradiction is a usage error."""
    qdrant_options = url is not None or path is not None or collection is not None
    if store is None:
        store = StoreName.qdrant if url is not None or path is not None else StoreName.faiss
    if store is StoreName.faiss:
        if qdrant_options:
            fail("--qdrant-url, --qdrant-path and --collection are for --store qdrant")
        return None
    if (url is None) == (path is None):
        fail("--store qdrant needs --qdrant-url URL (a server or cluster) or --qdrant-path DIR (embedded), one of them")
    if factory != "Flat" or search_params is not None:
        fail("--factory and --search-params are Faiss settings; Qdrant indexes its collection itself")
    return {"url": url, "path": path, "alias": collection}


@index_app.command("add")
def index_add(
    index: IndexDir,
    corpus: Annotated[Path, typer.Option(help="Documents to add (same formats as build); ids must be new.",
                                         callback=data_file)],
    id_field: Annotated[str, typer.Option(help="Column / key holding the document id.")] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding the document text.")] = "text",
) -> None:
    """Add documents to an existing index."""
    from deepsem.index import iter_corpus

    idx = load_index(index)
    added = idx.add(iter_corpus(corpus, id_field=id_field, text_field=text_field), source=corpus)
    typer.echo(f"added {added:,} documents; {len(idx):,} in the index")


@index_app.command("delete")
def index_delete(
    index: IndexDir,
    ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
) -> None:
    """Delete documents by id."""
    idx = load_index(index)
    typer.echo(f"deleted {idx.delete(ids):,} of {len(ids):,} ids; {len(idx):,} in the index")


@index_app.command("rebuild")
def index_rebuild(
    index: IndexDir,
    factory: Annotated[str | None, typer.Option(help="A new factory string (default: keep).")] = None,
) -> None:
    """Re-encode the live documents into a fresh index, reclaiming deleted ones."""
    idx = load_index(index)
    idx.rebuild(factory)
    typer.echo(f"rebuilt: {idx.stats()}")


@index_app.command("stats")
def index_stats(index: IndexDir) -> None:
    """Print the number of documents, the factory and the version."""
    typer.echo(json.dumps(load_index(index).stats(), indent=2))


def search(
    index: IndexDir,
    query: Annotated[list[str] | None, typer.Argument(help="Query text(s).")] = None,
    queries: Annotated[Path | None, typer.Option(help="A file of queries, one per line (blank lines skipped).",
                                                 callback=data_file)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query.", min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query, for scripts.")] = False,
    mode: Annotated[str | None, typer.Option(help="dense (cosine), lexical (BM25) or hybrid; default: hybrid "
                    "for an index built with --lexical, else dense.")] = None,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
    precision: EncodePrecision = PrecisionName.fp32,
    rerank: Annotated[Path | None, typer.Option(help="A cross-encoder's model directory (deepsem rerank train): "
                      "re-score each query's best --rerank-top first-stage documents with it (two-stage search); "
                      "each hit then shows the first stage's rank and score, and the stages' milliseconds are "
                      "printed.")] = None,
    rerank_top: Annotated[int | None, typer.Option(help="First-stage documents the re-ranker scores per query "
                          "(at least k are; default 50).", min=1)] = None,
    rerank_weight: Annotated[float | None, typer.Option(help="Score fusion: rank the candidates by W * the "
                             "re-ranker's probability + (1 - W) * the first stage's score, each min-max normalised "
                             "over the query's candidates (1: the re-ranker alone, the default; 0: the first "
                             "stage's order). Choose it on dev data.", min=0.0, max=1.0)] = None,
    timings: Annotated[bool, typer.Option(help="Print the milliseconds of each stage (encode, first stage, "
                       "rerank, total); on stderr with --json. On with --rerank.")] = False,
    rerank_onnx: RerankOnnxFile = None,
) -> None:
    """Search an index: ranked documents with their scores (cosine, BM25 or the hybrid score, or the
    re-ranker's probability with --rerank, the fused score with --rerank-weight below 1)."""
    texts = list(query or [])
    blank = [i for i, text in enumerate(texts, 1) if not text.strip()]
    if blank:
        fail(f"query {blank[0]} is empty: give a text to search for")
    if queries is not None:
        try:
            lines = queries.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            fail(f"{queries}: not UTF-8 text ({exc.reason})")
        texts += [line for line in lines if line.strip()]
    if not texts:
        fail("give a query text or --queries FILE")
    if rerank_top is not None and rerank is None:
        fail("--rerank-top is the re-ranker's number of candidates: give --rerank DIR too")
    if rerank_weight is not None and rerank is None:
        fail("--rerank-weight mixes the re-ranker's probability with the first stage's score: give --rerank DIR too")
    from deepsem.index.vector_index import cross_encoder
    from deepsem.tasks import load

    how = rerank_kwargs(backend, rerank, rerank_onnx, check_precision(precision))
    idx = load_index(index, precision=check_precision(precision), **backend_kwargs(backend, onnx))
    reranker = None if rerank is None else cross_encoder(load(rerank, **how))
    found, took = idx.search_timed(texts, k=k, mode=mode, rerank=reranker, rerank_top=rerank_top,
                                   rerank_weight=rerank_weight)
    for text, hits in zip(texts, found, strict=True):
        if as_json:
            typer.echo(json.dumps({"query": text, "results": [h.to_dict() for h in hits]}, ensure_ascii=False))
        else:
            typer.echo(f"> {text}")
            for rank, h in enumerate(hits, 1):
                first = "" if h.first_rank is None else f"  (first stage #{h.first_rank}, {h.first_score:.4f})"
                typer.echo(f"{rank:3d}. {h.score:.4f}  [{h.id}] {h.text}{first}")
    if timings or rerank is not None:
        typer.echo(f"stages ({len(texts)} quer{'y' if len(texts) == 1 else 'ies'}): {took}", err=as_json)
