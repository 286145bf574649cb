"""Recommendation with the two-tower model: train from an interaction log, evaluate over all items, serve.

    data = deepsem.tasks.recommendation.load_movielens("ml-100k")
    rec, result = deepsem.train_recommender(data, out="runs/ml100k")
    rec.recommend(["50", "172", "181"], k=10)          # [("174", 0.83), ...], seen items excluded

Training (:func:`train_recommender`): a leave-last-out split by time (:func:`split_sequences`); the user tower
reads each training sequence in windows of ``max_history`` items and is trained at every position to give the
next item the highest score (softmax over all items, over the batch's target items, or over those plus items
sampled by popularity, with the log-Q correction for the last two). Early stopping on validation NDCG@10.

Evaluation (:func:`evaluate_ranking_over_items`): each held-out user's targets are ranked among *all* items
(the items in the user's history excluded), never among a sample of candidates; HitRate@k, Recall@k, NDCG@k,
MRR and catalogue coverage@k. Baselines (most popular, Item2Vec) go through the same function.

Serving (:class:`Recommender`): item vectors are computed once and put in a Faiss inner-product index; the user
tower runs alone on the request's history. Unknown item ids in a history are ignored (and reported); a history
with no known item gets the most popular items.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepsem.config import RECOMMEND_NEGATIVES, RecommenderConfig, TrainConfig
from deepsem.data.errors import DataError
from deepsem.data.interactions import Interactions, SequenceSplit, load_movielens, split_sequences
from deepsem.data.precision import HasPrecision, as_float32, autocast, check_precision
from deepsem.deploy.runtime import Backend
from deepsem.errors import ConfigError
from deepsem.evaluation.recommendation import Scorer, evaluate_ranking_over_items, popularity_scores
from deepsem.fileio import atomic_write_json
from deepsem.losses import NextItemLoss
from deepsem.modeldir import TokenizerSize, read_model_dir, save_model_dir
from deepsem.models.recommender import TwoTowerRecommender
from deepsem.tasks.registry import Task, model_fields, register
from deepsem.text import Tokenizer, TrigramTokenizer, build_tokenizer
from deepsem.trainer import (
    TrainingPlan,
    TrainResult,
    data_fingerprint,
    run_fingerprint,
    run_training,
    training_config,
)
from deepsem.vectorstore.faiss_store import FaissStore

__all__ = [
    "Recommendation",
    "Recommender",
    "evaluate_baselines",
    "evaluate_ranking_over_items",
    "evaluate_recommender",
    "load_movielens",
    "popularity_scores",
    "split_sequences",
    "train_recommender",
]

ITEMS_FILE = "items.json"
INDEX_FILE = "items.faiss"
# -- the model's item features ---------------------------------------------------------------------------------
def _pad_rows(rows: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
    width = max(1, max((len(r) for r in rows), default=1)) if width is None else width
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:width]
        out[i, : len(r)] = r
    return out


@dataclass
class Catalogue:
    """The items the model knows (row ``i + 1`` of the model is ``ids[i]``) with their features."""

    ids: list[str]
    titles: list[str]
    categories: list[list[str]]
    counts: list[int]  # training interactions per item (the popularity fallback)
    category_vocab: list[str]
    user_feature_vocab: list[str]
    index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("item ids must be distinct")

    def to_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "titles": self.titles, "categories": self.categories, "counts": self.counts,
                "category_vocab": self.category_vocab, "user_feature_vocab": self.user_feature_vocab}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Catalogue:
        keys = ("ids", "titles", "categories", "counts", "category_vocab", "user_feature_vocab")
        if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
            raise ConfigError(f"{where}: expected an object with the lists {', '.join(keys)}")
        n = len(data["ids"])
        for k in ("titles", "categories", "counts"):
            if len(data[k]) != n:
                raise ConfigError(f"{where}: field {k!r} has {len(data[k])} entries for {n} items")
        return cls(ids=list(data["ids"]), titles=list(data["titles"]), categories=list(data["categories"]),
                   counts=list(data["counts"]), category_vocab=list(data["category_vocab"]),
                   user_feature_vocab=list(data["user_feature_vocab"]))

    def category_matrix(self) -> np.ndarray:
        vocab = {c: i + 1 for i, c in enumerate(self.category_vocab)}
        return _pad_rows([[]] + [[vocab[c] for c in cats if c in vocab] for cats in self.categories])

    def user_feature_ids(self, features: Sequence[Sequence[str]]) -> np.ndarray:
        vocab = {c: i + 1 for i, c in enumerate(self.user_feature_vocab)}
        return _pad_rows([[vocab[f] for f in feats if f in vocab] for feats in features])


def _title_matrix(tokenizer: Tokenizer | None, titles: Sequence[str]) -> np.ndarray | None:
    """Title token ids, one row per model row (row 0: padding); at most 16 words or 96 letter trigrams."""
    if tokenizer is None:
        return None
    width = 96 if isinstance(tokenizer, TrigramTokenizer) else 16
    return _pad_rows([[]] + [ids[:width] for ids in tokenizer.encode_batch([t or "" for t in titles])])


@dataclass
class Recommendation:
    """One answer: ``items`` [(item id, score)] best first; ``fallback`` is True when the history held no known
    item and the most popular items were returned (score = share of training interactions); ``unknown`` lists
    the history's ids the model does not know (ignored)."""

    items: list[tuple[str, float]]
    fallback: bool = False
    unknown: list[str] = field(default_factory=list)


class Recommender(Backend, HasPrecision):
    """A trained two-tower recommender, its item catalogue and its Faiss index of item vectors; ``precision``
    ``bf16`` runs the user tower under bf16 autocast (the item vectors, computed once and saved, stay float32).

    >>> rec = deepsem.load("runs/ml100k")                      # doctest: +SKIP
    >>> rec.recommend(["50", "172", "181"], k=3)               # doctest: +SKIP
    [('174', 0.83), ('210', 0.81), ('1', 0.79)]
    """

    def __init__(self, model: TwoTowerRecommender, catalogue: Catalogue, title_tokenizer: Tokenizer | None = None,
                 info: dict[str, Any] | None = None, precision: str = "fp32") -> None:
        if model.config.n_items != len(catalogue.ids):
            raise ValueError(f"{len(catalogue.ids)} catalogue items for a model of {model.config.n_items}")
        self.model = model
        self.catalogue = catalogue
        self.title_tokenizer = title_tokenizer
        self.info = dict(info or {})
        self.precision = precision
        model.item_tower.set_features(torch.from_numpy(catalogue.category_matrix()),
                                      _as_tensor(_title_matrix(title_tokenizer, catalogue.titles)))
        self._index: FaissStore | None = None
        self._item_vectors: np.ndarray | None = None
        counts = np.asarray(catalogue.counts, dtype=np.float64)
        self._popular = np.lexsort((np.arange(len(counts)), -counts))
        self._popular_share = counts / max(1.0, counts.sum())

    @property
    def config(self) -> RecommenderConfig:
        return self.model.config

    def __repr__(self) -> str:
        c = self.config
        return f"Recommender({c.n_items} items, user tower {c.encoder} {c.hidden_size}, dim {c.output_dim})"

    # -- towers, each on its own -----------------------------------------------------------------------------
    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """``(n_items, dim)`` L2-normalised float32 vectors, in catalogue order (computed once)."""
        if self._item_vectors is None:
            with _eval_mode(self.model):
                self._item_vectors = self.model.item_vectors().float().numpy().astype(np.float32)
        return self._item_vectors

    def _rows(self, history: Sequence[str]) -> tuple[list[int], list[str]]:
        rows, unknown = [], []
        for item in history:
            pos = self.catalogue.index.get(str(item))
            if pos is None:
                unknown.append(str(item))
            else:
                rows.append(pos)
        return rows, unknown

    @torch.no_grad()
    def user_vectors_of_rows(self, histories: Sequence[Sequence[int]],
                             user_features: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """User vectors of histories given as catalogue positions (each non-empty; the last ``max_history``
        items are read)."""
        cut = [list(h)[-self.config.max_history :] for h in histories]
        if any(not h for h in cut):
            raise ValueError("an empty history has no user vector")
        lengths = torch.tensor([len(h) for h in cut])
        hist = torch.from_numpy(_pad_rows([[p + 1 for p in h] for h in cut]))
        feats = (torch.from_numpy(self.catalogue.user_feature_ids(user_features))
                 if user_features is not None else None)
        if self._onnx is not None:
            feeds = {"history": hist.numpy(), "lengths": lengths.numpy()}
            if self.config.n_user_features > 0:
                feeds["features"] = (feats.numpy() if feats is not None
                                     else np.zeros((len(cut), 1), np.int64))  # no features: padding only
            return self._onnx["user"].run(feeds)[0]
        with _eval_mode(self.model):
            if self.precision == "fp32":
                return self.model.user_vectors(hist, lengths, feats).float().numpy()
            with autocast(self.precision):
                vectors = self.model.user_vectors(hist, lengths, feats)
            return as_float32(vectors, normalise=True).numpy()

    def user_vectors(self, histories: Sequence[Sequence[str]],
                     user_features: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """The user tower alone: item-id histories (oldest first) -> ``(N, dim)`` vectors. Unknown ids are
        ignored; a history with no known id raises ``ValueError``."""
        return self.user_vectors_of_rows([self._rows(h)[0] for h in histories], user_features)

    # -- answers ----------------------------------------------------------------------------------------------
    def index(self) -> FaissStore:
        """The flat inner-product vector store over :meth:`item_vectors` (exact; ids = catalogue positions; built
        once). ``search(vectors, k)`` answers as the Faiss index it wraps (``.index``) does."""
        if self._index is None:
            vectors = self.item_vectors()
            index = FaissStore.create(vectors.shape[1], id_map=False)
            index.add(vectors, np.arange(len(vectors), dtype=np.int64))
            self._index = index
        return self._index

    def recommend_many(self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True,
                       user_features: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        """:meth:`recommend` for many histories in one batch."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        resolved = [self._rows(h) for h in histories]
        known = [i for i, (rows, _) in enumerate(resolved) if rows]
        out = [Recommendation([], False, unknown) for _, unknown in resolved]
        if known:
            feats = [user_features[i] for i in known] if user_features is not None else None
            vectors = self.user_vectors_of_rows([resolved[i][0] for i in known], feats)
            n_items = len(self.catalogue.ids)
            extra = max((len(set(resolved[i][0])) for i in known), default=0) if exclude_seen else 0
            scores, found = self.index().search(vectors, min(n_items, k + extra))
            for row, i in enumerate(known):
                seen = set(resolved[i][0]) if exclude_seen else set()
                items = [(self.catalogue.ids[j], float(s)) for j, s in zip(found[row], scores[row], strict=True)
                         if j >= 0 and j not in seen]
                out[i].items = items[:k]
        for i, (rows, _) in enumerate(resolved):
            if not rows:
                out[i].fallback = True
                seen_ids = {str(x) for x in histories[i]} if exclude_seen else set()
                items = []
                for j in self._popular:
                    if self.catalogue.ids[j] not in seen_ids:
                        items.append((self.catalogue.ids[j], float(self._popular_share[j])))
                        if len(items) == k:
                            break
                out[i].items = items
        return out

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = True,
                  user_features: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """The ``k`` items with the highest cosine to the user vector of ``history`` (item ids, oldest first),
        the history's items excluded. An empty history, or one with no known item, gets the most popular items."""
        feats = [user_features] if user_features is not None else None
        return self.recommend_many([history], k, exclude_seen, feats)[0].items

    def scorer(self, split: SequenceSplit, user_features: dict[str, list[str]] | None = None) -> Scorer:
        """A :data:`Scorer` over ``split``'s items, which must be this model's catalogue in order, possibly followed
        by items the model does not know (scored -inf: never recommended)."""
        n = len(self.catalogue.ids)
        if list(split.items[:n]) != self.catalogue.ids:
            raise ValueError("the split's items are not this model's catalogue")
        vectors = self.item_vectors()
        popular = np.concatenate([self._popular_share, np.full(len(split.items) - n, -np.inf)])
        vectors = np.concatenate([vectors, np.zeros((len(split.items) - n, vectors.shape[1]), np.float32)])

        def score(users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
            out = np.tile(popular, (len(users), 1))
            rows = [i for i, h in enumerate(histories) if len(h)]
            if rows:
                feats = ([user_features.get(split.users[users[i]], []) for i in rows]
                         if user_features is not None else None)
                u = self.user_vectors_of_rows([histories[i].tolist() for i in rows], feats)
                out[rows] = u @ vectors.T
                out[:, n:] = -np.inf
            return out

        return score

    # -- files ------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``config.json`` (last), ``model.safetensors``, ``items.json``, ``items.faiss`` and, with titles,
        the title tokenizer's files; each written atomically."""
        self._item_vectors = None  # the item index is rebuilt from the weights as they are now
        self._index = None
        files = {ITEMS_FILE: lambda p: atomic_write_json(p, self.catalogue.to_dict()),
                 INDEX_FILE: lambda p: self.index().save(p)}
        extra = {k: v for k, v in self.info.items() if k not in ("deepsem_version", "task", "recommender")}
        return save_model_dir(directory, self.model, self.title_tokenizer, extra, task="recommender",
                              tasks=model_fields(), files=files)

    @classmethod
    def load(cls, directory: str | Path, precision: str = "fp32") -> Recommender:
        """Rebuild from ``config.json`` (validated, and checked against the weights file's header, before any tensor
        is allocated), ``items.json``, the title tokenizer, the weights and ``items.faiss`` (checked: its size, kind,
        count, dimension and finite vectors; rebuilt from the weights when absent)."""
        from deepsem.errors import ModelFileError, ModelFileMissingError
        from deepsem.modeldir import read_json_file

        directory = Path(directory)

        def read_items(config: dict[str, Any], rcfg: RecommenderConfig) -> Catalogue:
            """``items.json``: the catalogue, checked against the model's item count."""
            items_path = directory / ITEMS_FILE
            if not items_path.exists():
                raise ModelFileMissingError(f"{directory}: {ITEMS_FILE} is missing")
            data = read_json_file(items_path, ConfigError)
            if isinstance(data, dict):  # element types first: Catalogue hashes ids and categories
                for key, kinds, what in (("ids", str, "strings"), ("titles", (str, type(None)), "strings or null"),
                                         ("category_vocab", str, "strings"), ("user_feature_vocab", str, "strings"),
                                         ("counts", (int, float), "finite numbers >= 0")):
                    values = data.get(key)
                    if isinstance(values, list) and not all(isinstance(v, kinds) and not isinstance(v, bool)
                                                            for v in values):
                        raise ConfigError(f"{items_path}: field {key!r} must be a list of {what}")
                counts, cats, ids = data.get("counts"), data.get("categories"), data.get("ids")
                if isinstance(counts, list) and not all(
                        0 <= c < 2**53 if isinstance(c, int) else math.isfinite(c) and c >= 0 for c in counts):
                    raise ConfigError(f"{items_path}: field 'counts' must be a list of finite numbers >= 0")
                if isinstance(cats, list) and not all(isinstance(c, list) and all(isinstance(x, str) for x in c)
                                                      for c in cats):
                    raise ConfigError(f"{items_path}: field 'categories' must hold a list of strings per item")
                if isinstance(ids, list) and len(set(ids)) != len(ids):
                    raise ConfigError(f"{items_path}: field 'ids' holds the same item id twice")
            catalogue = Catalogue.from_dict(data, str(items_path))
            if len(catalogue.ids) != rcfg.n_items:
                raise ConfigError(f"{items_path}: {len(catalogue.ids)} items, but config.json's recommender.n_items "
                                  f"is {rcfg.n_items}: the catalogue and the weights come from different models")
            return catalogue

        def title_tokenizer(rcfg: RecommenderConfig) -> TokenizerSize | None:
            if rcfg.title_encoder == "none":
                return None
            return TokenizerSize(rcfg.n_title_tokens + 1, f"recommender.n_title_tokens is {rcfg.n_title_tokens} "
                                 "(+1 for padding)", "the title tokenizer")

        read = read_model_dir(
            directory, "recommender", "a recommender", tasks=model_fields(), check=read_items,
            parse=lambda data, where: RecommenderConfig.from_dict(data, where=where), build=TwoTowerRecommender,
            tokenizer=title_tokenizer)
        rcfg = read.model_config
        info = {k: v for k, v in read.config.items() if k not in ("deepsem_version", "task", "recommender")}
        rec = cls(read.model, read.extra, read.tokenizer, info, precision)
        index_path = directory / INDEX_FILE
        if index_path.exists():
            vectors = 4 * rcfg.n_items * rcfg.output_dim
            size = index_path.stat().st_size if index_path.is_file() else -1
            if not vectors <= size <= vectors + 4096:  # a flat index: a short header, then the float32 vectors
                raise ModelFileError(f"{index_path}: {size:,} bytes, but a Faiss flat index of {rcfg.n_items:,} "
                                     f"vectors of dimension {rcfg.output_dim} (config.json's n_items and output_dim) "
                                     f"has {vectors:,} plus a short header; delete it to rebuild it from the weights")
            index = FaissStore.load(index_path, id_map=False, error=ModelFileError,
                                    remedy="delete it to rebuild it from the weights")
            if len(index) != rcfg.n_items or index.dim != rcfg.output_dim:
                raise ConfigError(f"{index_path}: {len(index)} vectors of dimension {index.dim}, but config.json says "
                                  f"{rcfg.n_items} items (n_items) of dimension {rcfg.output_dim} (output_dim)")
            if not np.isfinite(index.reconstruct(np.arange(len(index)))).all():
                raise ModelFileError(f"{index_path}: holds NaN or infinite vectors; delete it to rebuild it from the "
                                     "weights")
            rec._index = index
        return rec


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode inside, the caller's mode (training, mid-run) restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _as_tensor(array: np.ndarray | None) -> Tensor | None:
    return None if array is None else torch.from_numpy(array)


def evaluate_recommender(rec: Recommender, split: SequenceSplit, stage: str = "test", ks: Sequence[int] = (10, 50),
                         user_features: dict[str, list[str]] | None = None) -> dict[str, float]:
    """:func:`evaluate_ranking_over_items` of a trained recommender."""
    return evaluate_ranking_over_items(rec.scorer(split, user_features), split, stage, ks)


def evaluate_baselines(split: SequenceSplit, stage: str = "test", ks: Sequence[int] = (10, 50)
                       ) -> dict[str, dict[str, float]]:
    """The baselines on the same split, scored as :func:`evaluate_recommender` scores a model: ``most-popular``
    (items by training count) and ``item2vec`` (skip-gram over each user's history before ``stage``; needs
    gensim)."""
    from deepsem.item2vec import train_item2vec

    vectors = train_item2vec([split.history(u, stage).tolist() for u in range(len(split.users))])
    return {"most-popular": evaluate_ranking_over_items(popularity_scores(split), split, stage, ks),
            "item2vec": evaluate_ranking_over_items(vectors.scorer(split), split, stage, ks)}


# -- training -------------------------------------------------------------------------------------------------
def training_windows(sequences: Sequence[np.ndarray], max_history: int) -> np.ndarray:
    """``(start, end, first_target)`` rows cutting each sequence into windows of at most ``max_history + 1``
    items: a window's inputs are ``seq[start:end-1]``, its targets ``seq[start+1:end]``, and only targets at
    positions >= ``first_target`` are trained on. Windows overlap by half so that every target after the first
    window has at least ``max_history // 2`` items of history; each target is trained on exactly once."""
    rows = []
    stride = max(1, max_history // 2)
    for u, seq in enumerate(sequences):
        n = len(seq)
        if n < 2:
            continue
        end = min(n, max_history + 1)
        rows.append((u, 0, end, 1))
        while end < n:
            new_end = min(n, end + stride)
            rows.append((u, max(0, new_end - max_history - 1), new_end, end))
            end = new_end
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def _resolve_data(data: Interactions | str | os.PathLike[str]) -> Interactions:
    if isinstance(data, Interactions):
        return data
    path = Path(data)
    if path.is_dir():
        return load_movielens(path)
    from deepsem.data.interactions import read_interactions

    return read_interactions(path)


def train_recommender(
    data: Interactions | str | os.PathLike[str] | SequenceSplit,
    out: str | os.PathLike[str],
    *,
    config: RecommenderConfig | dict[str, Any] | None = None,
    training: TrainConfig | dict[str, Any] | None = None,
    negatives: str = "full",
    num_negatives: int = 256,
    logq: bool = True,
    n_valid: int = 1,
    n_test: int = 1,
    min_rating: float | None = None,
    use_item_features: bool = True,
    use_user_features: bool = True,
    item2vec_init: bool = False,
    interactions: Interactions | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool | None = None,
    device: str | torch.device | None = None,
) -> tuple[Recommender, TrainResult]:
    """Train the two-tower recommender on ``data`` and save the best model (validation NDCG@10) to ``out``.

    ``data``: :class:`Interactions` (e.g. from :func:`load_movielens` or
    :func:`~deepsem.data.interactions.read_interactions`), a MovieLens folder, a log file, or a ready
    :class:`SequenceSplit` (then ``n_valid``/``n_test``/``min_rating`` are not used, and the item and user
    features come from ``interactions``, the log the split was made from). The split is leave-last-out
    by time (``n_test`` test and ``n_valid`` validation items per user); the test items are never trained on.
    ``negatives``: ``"full"`` (softmax over every item), ``"in-batch"`` (over the batch's target items) or
    ``"sampled"`` (those plus ``num_negatives`` items drawn by popularity); ``logq`` subtracts the log of each
    candidate's sampling probability for the last two. ``item2vec_init``: start the item-id embeddings from
    Item2Vec vectors trained on the training sequences (needs gensim). Run files go to ``run_dir`` (default
    ``out/training``); a killed run started again with the same data and settings resumes from its checkpoint;
    with other ones it raises :class:`~deepsem.errors.ResumeMismatchError` (``resume=False`` starts over).
    ``progress``: a progress bar; None shows it only when stderr is a terminal. ``device``: where to train
    (default the CPU). Validation (the dev data of the other tasks) is the leave-last-out part of ``data`` itself.
    """
    t0 = time.perf_counter()
    cfg = training_config(training, {"lr": 2e-3, "epochs": 60, "batch_size": 64, "patience": 5,
                                     "weight_decay": 0.0})
    check_precision(cfg.precision, device or "cpu")  # before any data is read
    if negatives not in RECOMMEND_NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(RECOMMEND_NEGATIVES)}, got {negatives!r}")
    if isinstance(data, SequenceSplit):
        split = data
    else:
        interactions = _resolve_data(data).filter(min_rating)
        split = split_sequences(interactions, n_test=n_test, n_valid=n_valid)
    source = getattr(interactions, "source", None) or "interactions"
    if not sum(len(s) for s in split.train):
        raise DataError(source, None, None, "no training data")
    features = interactions.item_features if (interactions is not None and use_item_features) else None
    user_features = interactions.user_features if (interactions is not None and use_user_features) else None

    rcfg = config if isinstance(config, RecommenderConfig) else RecommenderConfig.from_dict(config or {},
                                                                                           "recommender")
    model_settings = rcfg.to_dict()
    for derived in ("n_items", "n_categories", "n_user_features", "n_title_tokens"):  # set from the data below
        model_settings.pop(derived, None)
    item_features = None if features is None else ([features.titles.get(i, "") for i in split.items],
                                                   [features.categories.get(i, []) for i in split.items])
    fingerprint = run_fingerprint(
        cfg, **{"training data": data_fingerprint(split.items, split.train, split.valid, item_features,
                                                  None if user_features is None else
                                                  [user_features.get(u, []) for u in split.users])},
        model=model_settings,
        task={"negatives": negatives, "num_negatives": num_negatives, "logq": logq, "item2vec_init": item2vec_init})

    def build(_: None) -> TrainingPlan:
        counts = split.train_counts()
        catalogue, title_tok = _catalogue(split, rcfg, features, user_features, counts)
        net = TwoTowerRecommender(rcfg)
        rec = Recommender(net, catalogue, title_tok)
        if item2vec_init:
            from deepsem.item2vec import train_item2vec

            vectors = train_item2vec([s.tolist() for s in split.train], dim=rcfg.embedding_dim, seed=cfg.seed)
            vectors.copy_into(net.item_tower.id_embedding.weight, [str(i) for i in range(len(split.items))])
        windows = training_windows(split.train, rcfg.max_history)
        if not len(windows):
            raise DataError(source, None, None,
                            "no user has two training interactions; nothing to learn a next item from")
        user_feat_ids = (torch.from_numpy(catalogue.user_feature_ids([user_features.get(u, [])
                                                                      for u in split.users]))
                         if user_features else None)

        def evaluate() -> dict[str, float]:
            rec._item_vectors = None
            metrics = evaluate_ranking_over_items(rec.scorer(split, user_features), split, "valid", (10, 50))
            rec._item_vectors = None
            return metrics

        info: dict[str, Any] = {"training": cfg.to_dict(), "negatives": negatives, "logq": logq,
                                "num_negatives": num_negatives, "train_interactions": int(counts.sum()),
                                "users": len(split.users), "n_valid": n_valid, "n_test": n_test,
                                "min_rating": min_rating}

        def record_best(metrics: dict[str, float]) -> None:
            if metrics:
                info["valid_metrics"] = metrics
            rec.info = dict(info)

        def batches(epoch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
            order = rng.permutation(len(windows))
            for start in range(0, len(order), cfg.batch_size):
                yield order[start : start + cfg.batch_size]

        return TrainingPlan(
            wrapper=rec, loss=NextItemLoss(net, counts, negatives=negatives, num_negatives=num_negatives, logq=logq),
            collate=WindowCollate(split.train, windows, user_feat_ids), batches=batches,
            steps_per_epoch=math.ceil(len(windows) / cfg.batch_size),
            evaluate=evaluate if any(len(v) for v in split.valid) else None, metric="ndcg@10", info=info,
            record_best=record_best,
        )

    return run_training(cfg, out, fingerprint, build, run_dir=run_dir, resume=resume, progress=progress,
                        device=device, started=t0)


def _catalogue(split: SequenceSplit, rcfg: RecommenderConfig, features: Any,
               user_features: dict[str, list[str]] | None, counts: np.ndarray) -> tuple[Catalogue, Tokenizer | None]:
    """The catalogue of ``split``'s items and the title tokenizer; sets ``rcfg``'s sizes from them."""
    titles = [features.titles.get(i, "") if features else "" for i in split.items]
    categories = [features.categories.get(i, []) if features else [] for i in split.items]
    category_vocab = sorted({c for cats in categories for c in cats})
    user_vocab = sorted({f for feats in (user_features or {}).values() for f in feats})
    catalogue = Catalogue(list(split.items), titles, categories, counts.tolist(), category_vocab, user_vocab)
    title_tok: Tokenizer | None = None
    if rcfg.title_encoder != "none" and any(titles):
        from deepsem.towers import TRIGRAM_ENCODERS

        kind = "trigram" if rcfg.title_encoder in TRIGRAM_ENCODERS else "word"
        title_tok = build_tokenizer(kind, iter([t for t in titles if t]), min_count=2)
    else:
        rcfg.title_encoder = "none"
    rcfg.n_items = len(split.items)
    rcfg.n_categories = max(1, len(category_vocab))
    rcfg.n_user_features = max(1, len(user_vocab))
    rcfg.n_title_tokens = title_tok.vocab_size - 1 if title_tok is not None else 1
    rcfg.validate()
    return catalogue, title_tok


class WindowCollate:
    """Turns a batch of :func:`training_windows` rows into the tensors :class:`~deepsem.losses.NextItemLoss`
    takes: inputs and next-item targets (catalogue position + 1, 0 pads), lengths, the positions trained on and
    the users' feature ids."""

    def __init__(self, sequences: Sequence[np.ndarray], windows: np.ndarray, user_features: Tensor | None) -> None:
        self.sequences, self.windows, self.user_features = sequences, windows, user_features

    def __call__(self, rows: np.ndarray) -> dict[str, Tensor]:
        w = self.windows[rows]
        seqs = [self.sequences[u][s:e] for u, s, e, _ in w]
        inputs = torch.from_numpy(_pad_rows([(seq[:-1] + 1).tolist() for seq in seqs]))
        targets = torch.from_numpy(_pad_rows([(seq[1:] + 1).tolist() for seq in seqs], inputs.shape[1]))
        pos = torch.arange(inputs.shape[1])[None, :] + torch.from_numpy(w[:, 1])[:, None] + 1
        batch = {"inputs": inputs, "targets": targets, "lengths": torch.tensor([len(seq) - 1 for seq in seqs]),
                 "keep": (pos >= torch.from_numpy(w[:, 3])[:, None]) & (targets > 0)}
        if self.user_features is not None:
            batch["features"] = self.user_features[torch.from_numpy(w[:, 0])]
        return batch


register(Task(name="recommender", model_field="recommender", wrapper=Recommender, train=train_recommender,
              evaluate=evaluate_recommender, cli_group="recommend",
              summary="next-item recommendation from behaviour sequences"))
