"""Text matching with a two-tower model: train from pairs, evaluate on pairs or a retrieval set.

This is what ``deepsem train`` and ``deepsem evaluate`` run, and what :func:`deepsem.train` exposes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from deepsem.config import ModelConfig, TrainConfig
from deepsem.data.batches import PairSet, TextTable, encode_texts
from deepsem.data.errors import DataError
from deepsem.data.pairs import TextPairs, as_pairs, clicks_to_pairs
from deepsem.evaluation.pairs import (
    RANKING_METRICS,
    evaluate_pairs,
    evaluate_ranking,
    evaluate_retrieval,
    evaluate_translation,
)
from deepsem.losses import hinge_loss, negative_scores, pointwise_loss, softmax_loss
from deepsem.modeldir import load_model_dir, save_model_dir
from deepsem.models import TwoTowerModel
from deepsem.tasks.registry import Task, model_fields, register
from deepsem.text import Tokenizer, TrigramTokenizer, build_tokenizer, load_tokenizer
from deepsem.trainer import (
    Trainer,
    TrainResult,
    check_resume,
    data_fingerprint,
    finish_run,
    run_fingerprint,
    tokenizer_fingerprint,
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
    "load_pretrained",
    "train",
]

class SemanticModel:
    """A trained two-tower model with its tokenizer.

    >>> model = deepsem.load("runs/bq")                       # doctest: +SKIP
    >>> model.encode(["怎么还款", "如何还钱"]).shape            # doctest: +SKIP
    (2, 128)
    >>> model.similarity("怎么还款", "如何还钱")                # doctest: +SKIP
    0.93
    """

    def __init__(self, model: TwoTowerModel, tokenizer: Tokenizer, info: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = dict(info or {})

    @classmethod
    def load(cls, directory: str | Path) -> SemanticModel:
        """Rebuild from a model directory (:func:`deepsem.modeldir.read_model_dir`: every file checked)."""
        model, tokenizer, config = load_model_dir(directory, model_fields())
        return cls(model, tokenizer, config)

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
        return encode_texts(self.model, self.tokenizer, texts, side=side, batch_size=batch_size)

    @overload
    def similarity(self, a: str, b: str) -> float: ...
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
def labelled_negatives(pairs: PairSet) -> dict[int, np.ndarray]:
    """For each query row, the document rows labelled 0 with it (an impression's unclicked documents, a
    question's wrong candidates)."""
    groups: dict[int, list[int]] = {}
    for a, b, y in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.labels.tolist(), strict=True):
        if y <= 0.5:
            groups.setdefault(a, []).append(b)
    return {a: np.unique(np.asarray(bs)) for a, bs in groups.items()}


def sample_negatives(queries: np.ndarray, k: int, rng: np.random.Generator, doc_pool: np.ndarray,
                     own: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """``(len(queries), k)`` document rows: ``k`` of each query's own labelled negatives when ``own`` has any
    (with repeats if it has fewer than ``k``), random documents of ``doc_pool`` otherwise."""
    if own is None:
        return rng.choice(doc_pool, size=(len(queries), k))
    rows = [rng.choice(own[q], size=k, replace=len(own[q]) < k) if q in own else rng.choice(doc_pool, size=k)
            for q in queries.tolist()]
    return np.stack(rows) if rows else np.zeros((0, k), np.int64)


def _pair_step(model: TwoTowerModel, table: TextTable, pairs: PairSet, cfg: TrainConfig,
               rng: np.random.Generator):
    doc_pool = np.unique(pairs.b[pairs.labels > 0.5]) if (pairs.labels > 0.5).any() else np.unique(pairs.b)
    own = labelled_negatives(pairs) if cfg.negatives == "labelled" else None
    use_softmax = cfg.loss in ("softmax", "hinge", "pointwise+softmax")

    def step(idx: np.ndarray) -> torch.Tensor:
        a_rows, b_rows = pairs.a[idx], pairs.b[idx]
        labels = torch.from_numpy(pairs.labels[idx])
        q = model.encode(*table.batch(a_rows), "query")
        d = model.encode(*table.batch(b_rows), "doc")
        loss = torch.zeros(())
        if cfg.loss in ("pointwise", "pointwise+softmax"):
            loss = loss + pointwise_loss((q * d).sum(-1), (labels > 0.5).float(), model.gamma, model.bias)
        positive = np.flatnonzero(pairs.labels[idx] > 0.5)
        if use_softmax and len(positive):
            p = torch.from_numpy(positive)
            same = torch.from_numpy(b_rows[positive][:, None] == b_rows[None, :])
            sampled, sampled_rows = None, None
            if cfg.negatives in ("random", "both", "labelled"):
                sampled_rows = sample_negatives(a_rows[positive], cfg.num_negatives, rng, doc_pool, own)
                flat = sampled_rows.reshape(-1)
                sampled = model.encode(*table.batch(flat), "doc").view(len(positive), cfg.num_negatives, -1)
            pos, neg = negative_scores(q[p], d, p, same_doc=same, sampled=sampled,
                                       in_batch=cfg.negatives != "random")
            if sampled_rows is not None:
                clash = torch.from_numpy(sampled_rows == b_rows[positive][:, None])
                neg = torch.cat([neg[:, : neg.shape[1] - cfg.num_negatives],
                                 neg[:, -cfg.num_negatives :].masked_fill(clash, float("-inf"))], dim=1)
            if cfg.loss == "hinge":
                term = hinge_loss(pos, neg, cfg.margin)
            else:
                term = softmax_loss(pos, neg, model.gamma)
                if cfg.symmetric and model.config.shared_towers and cfg.negatives != "random":
                    # the other direction: each positive document picks its query among the batch's queries
                    a_sel = a_rows[positive]
                    same_q = torch.from_numpy(a_sel[:, None] == a_sel[None, :])
                    rpos, rneg = negative_scores(d[p], q[p], torch.arange(len(positive)), same_doc=same_q)
                    term = 0.5 * (term + softmax_loss(rpos, rneg, model.gamma))
            loss = loss + cfg.softmax_weight * term
        if not loss.requires_grad:  # a batch without a positive pair under a softmax/hinge loss: nothing to learn
            loss = 0.0 * (q.sum() + d.sum())
        return loss

    return step


def train(
    train_data: str | Path | TextPairs,
    out: str | Path,
    dev_data: str | Path | TextPairs | None = None,
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
) -> tuple[SemanticModel, TrainResult]:
    """Train a two-tower model on pairs and save the best model (by dev score) to ``out``.

    ``train_data``/``dev_data``: a file (TSV/CSV/JSONL/Parquet, columns text_a, text_b[, label]; or a click
    log with ``clicks=True``, see :func:`as_pairs`) or :class:`TextPairs`. With 0/1 labels the dev metric
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
    only when stderr is a terminal.
    """
    t0 = time.perf_counter()
    cfg = training if isinstance(training, TrainConfig) else TrainConfig.from_dict(training or {}, "training")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out / "training"
    train_pairs = as_pairs(train_data, columns, skip_bad_rows, label_map, clicks, impressions, binary=True)
    dev_pairs = (as_pairs(dev_data, columns, skip_bad_rows, label_map, clicks, impressions)
                 if dev_data is not None else None)
    if not len(train_pairs.text_a):
        if isinstance(train_data, str | Path):
            raise DataError(train_data, None, None, "no training pairs (the file is empty or holds only a header)")
        raise ValueError("no training pairs")

    mcfg = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model or {}, "model")
    fingerprint = _pair_fingerprint(cfg, mcfg, train_pairs, dev_pairs, tokenizer, tokenizer_options,
                                    pretrained=None if pretrained is None else str(pretrained),
                                    freeze_embeddings=freeze_embeddings, dev_metric=dev_metric)
    resuming = check_resume(run_dir, fingerprint, resume)

    # the tokenizer is learned from the training texts once; a resumed run (same data and settings) reuses it
    if isinstance(tokenizer, str):
        if resuming and (run_dir / "tokenizer" / "tokenizer.json").exists():
            tok = load_tokenizer(run_dir / "tokenizer")
        else:
            tok = build_tokenizer(tokenizer, _iter_texts(train_pairs), **(tokenizer_options or {}))
            tok.save(run_dir / "tokenizer")
    else:
        tok = tokenizer
    mcfg.tower.vocab_size = tok.vocab_size
    mcfg.tower.validate()
    check_tokenizer_fits(mcfg.tower.encoder, tok)
    torch.manual_seed(cfg.seed)
    net = TwoTowerModel(mcfg)

    table = TextTable(tok)
    labels = train_pairs.labels if train_pairs.labels is not None else np.ones(len(train_pairs.text_a), np.float32)
    pairs = PairSet.from_texts(table, train_pairs.text_a, train_pairs.text_b, labels)
    semantic = SemanticModel(net, tok)
    labelled_dev = dev_pairs is not None and dev_pairs.is_labelled
    metric = dev_metric or ("accuracy" if labelled_dev else "mrr@10")
    ranking = metric in RANKING_METRICS and labelled_dev
    pair_keys = ("accuracy", "f1", "roc_auc", "spearman")
    if dev_pairs is not None and metric not in (RANKING_METRICS + pair_keys if labelled_dev else ("mrr@10",)):
        raise ValueError(f"dev_metric {metric!r} does not apply to "
                         f"{'labelled' if labelled_dev else 'positive-only'} dev pairs")

    def evaluate() -> dict[str, float]:
        assert dev_pairs is not None
        if ranking:
            return {**evaluate_ranking(semantic, dev_pairs), **evaluate_pairs(semantic, dev_pairs)}
        if labelled_dev:
            return evaluate_pairs(semantic, dev_pairs)
        return evaluate_translation(semantic, dev_pairs)

    info: dict[str, Any] = {"training": cfg.to_dict(), "train_pairs": len(pairs)}
    if pretrained is not None:
        info["pretrained"] = load_pretrained(net, tok, pretrained, freeze_embeddings)

    def on_best(metrics: dict[str, float]) -> None:
        if "threshold" in metrics:
            net.config.threshold = float(metrics["threshold"])
        info["dev_metrics"] = metrics
        semantic.info = info
        semantic.save(out)

    step_rng = np.random.default_rng([cfg.seed, 7])
    steps_per_epoch = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    trainer = Trainer(
        net, cfg, run_dir,
        step=_pair_step(net, table, pairs, cfg, step_rng),
        batches=lambda epoch, rng: pairs.batches(cfg.batch_size, rng, by_length=cfg.length_buckets),
        steps_per_epoch=steps_per_epoch,
        evaluate=evaluate if dev_pairs is not None else None,
        metric=metric, on_best=on_best, progress=progress, fingerprint=fingerprint,
        rngs={"negatives": step_rng},  # random negatives resume where they stopped
    )
    result = trainer.fit(resume=resume)
    return finish_run(result, info, out, run_dir, metric, t0, SemanticModel.load), result


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
    from deepsem.embeddings import initialize_embedding, read_vectors, vocab_tokens

    tokens = vocab_tokens(tokenizer)
    words, matrix = read_vectors(path, vocab=set(tokens))
    report: dict[str, Any] = {}
    for tower in dict.fromkeys([net.query_tower, net.doc_tower]):
        embedding = getattr(tower, "embedding", None)
        if embedding is None:
            raise ValueError(f"encoder {net.config.tower.encoder!r} has no token embedding table for pretrained "
                             "vectors (the dssm and cnn towers hash letter trigrams)")
        coverage = initialize_embedding(embedding.weight, tokens, (words, matrix))
        embedding.weight.requires_grad_(not freeze)
        report = {"path": str(path), "found": coverage.found, "total": coverage.total, "frozen": freeze}
    print(f"pretrained vectors: {report['found']} of {report['total']} tokens found in {path}"
          + (" (frozen)" if freeze else ""))
    return report


def check_tokenizer_fits(encoder: str, tokenizer: Tokenizer) -> None:
    """The ``dssm`` and ``cnn`` towers read letter trigrams with word separators: only the ``trigram`` tokenizer."""
    from deepsem.towers import TRIGRAM_ENCODERS

    if encoder in TRIGRAM_ENCODERS and not isinstance(tokenizer, TrigramTokenizer):
        raise ValueError(f"encoder {encoder!r} reads letter trigrams: use tokenizer 'trigram', "
                         f"not {tokenizer.name!r}")


def _iter_texts(pairs: TextPairs):
    yield from pairs.text_a
    yield from pairs.text_b


register(Task(name="two-tower", model_field="model", wrapper=SemanticModel, train=train, evaluate=evaluate_pairs,
              cli_group="train", summary="text matching and semantic search with a two-tower model"))
