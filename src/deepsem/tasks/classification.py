"""Text classification with the towers: read labelled texts, train, evaluate, predict, save and load.

    clf, result = train_classifier("train.tsv", "runs/news", dev="dev.tsv", tokenizer="trigram",
                                   tower={"encoder": "cnn"}, training={"epochs": 5})
    clf.predict(["央行宣布降准"], k=3)          # [[("finance", 0.91), ("stocks", 0.06), ("realty", 0.01)]]
    evaluate_classifier(clf, "test.tsv", confusion_png="confusion.png")
    clf = deepsem.load("runs/news")             # a Classifier: config.json says task "classifier"

A data file holds a text column and a label column (TSV/CSV/JSONL/Parquet, columns by 0-based index or
header name). Labels are strings (numbers are read as their text: ``3`` and ``"3"`` are the same label); in
multi-label data one field holds several labels split on ``label_sep`` (or a JSON list), and an empty
field means "none of the labels". Bad rows (empty text, undecodable bytes, a missing column, an unknown
label in dev/test data) raise :class:`~deepsem.data.errors.DataError` naming the file, line and field, or
are skipped and counted with ``skip_bad_rows=True``. A directory or glob of such files is streamed (see
:func:`train_classifier`).

The model directory holds ``config.json`` (``"task": "classifier"``, the labels, the
:class:`~deepsem.config.ClassifierConfig`), the tokenizer files and ``model.safetensors``; never a pickle.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from deepsem.config import ClassifierConfig, TowerConfig, TrainConfig
from deepsem.data.batches import length_batches
from deepsem.data.errors import DataError
from deepsem.data.labelled import LabelledTexts, as_labelled, read_labelled, sort_labels
from deepsem.data.precision import HasPrecision, autocast, check_precision
from deepsem.data.readers import Column
from deepsem.data.stream import (
    DEFAULT_SHUFFLE_BUFFER,
    LabelledStream,
    TextBatch,
    TokenCache,
    find_shards,
    is_sharded,
    shard_fingerprint,
    shard_root,
)
from deepsem.deploy.runtime import Backend, run_batches
from deepsem.errors import ConfigError
from deepsem.evaluation.classification import classification_metrics, plot_confusion
from deepsem.losses import ClassificationLoss, classification_loss
from deepsem.modeldir import (
    CONFIG_FILE,
    TokenizerSize,
    read_model_dir,
    save_model_dir,
)
from deepsem.models.classifier import TextClassifier
from deepsem.tasks.registry import Task, model_fields, register
from deepsem.text import Tokenizer, TrigramTokenizer
from deepsem.trainer import (
    TrainingPlan,
    TrainResult,
    data_fingerprint,
    distributed_rank,
    renamed_argument,
    run_fingerprint,
    run_training,
    tokenizer_fingerprint,
    training_config,
)

__all__ = [
    "Classifier",
    "LabelledTexts",
    "classification_loss",
    "classification_metrics",
    "compute_class_weights",
    "evaluate_classifier",
    "read_labelled",
    "sort_labels",
    "train_classifier",
]

#: ``config.json`` fields written by :meth:`Classifier.save` itself (not taken from ``info``).
_RESERVED = ("deepsem_version", "task", "classifier", "labels")
#: Rows of a training epoch sorted by length together: batches of similar lengths waste little padding.
_BUCKET_BATCHES = 50


# -- targets, weights, loss -----------------------------------------------------------------------------------
def _targets(data: LabelledTexts, labels: Sequence[str], multi_label: bool) -> np.ndarray:
    """Label ids ``(N,)`` int64, or a 0/1 matrix ``(N, L)`` float32 for multi-label data."""
    index = {y: i for i, y in enumerate(labels)}
    if multi_label:
        out = np.zeros((len(data), len(labels)), np.float32)
        for r, row in enumerate(data.labels):
            out[r, [index[y] for y in row]] = 1.0
        return out
    for row, line in zip(data.labels, data.lines, strict=True):
        if len(row) != 1:
            raise DataError(data.source or "<data>", line, "label",
                            f"{len(row)} labels {row!r} on one row: train with multi_label=True")
    return np.fromiter((index[row[0]] for row in data.labels), np.int64, len(data))


def compute_class_weights(
    targets: np.ndarray, labels: Sequence[str], spec: str | Mapping[str, float] | None, multi_label: bool = False
) -> np.ndarray | None:
    """Per-label loss weights from ``spec``: ``None`` (none), ``"balanced"`` or ``{label: weight}``.

    One label per text: weights of the cross-entropy; ``"balanced"`` is ``n / (num_labels * count)`` (rare
    classes count more, as scikit-learn's ``class_weight="balanced"``). Multi-label: the ``pos_weight`` of
    each label's BCE (how much a positive counts against a negative); ``"balanced"`` is
    ``negatives / positives``. A dict gives weights by label name; labels it leaves out weigh 1.
    """
    if spec is None:
        return None
    n = len(targets)
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class weights must be None, 'balanced' or a dict of label -> weight, got {spec!r}")
        if multi_label:
            positives = targets.sum(0).astype(np.float64)
            return (np.maximum(n - positives, 1.0) / np.maximum(positives, 1.0)).astype(np.float32)
        counts = np.bincount(targets, minlength=len(labels)).astype(np.float64)
        return (n / (len(labels) * np.maximum(counts, 1.0))).astype(np.float32)
    if not isinstance(spec, Mapping):
        raise ValueError(f"class weights must be None, 'balanced' or a dict of label -> weight, got {spec!r}")
    index = {y: i for i, y in enumerate(labels)}
    out = np.ones(len(labels), np.float32)
    for label, weight in spec.items():
        key = str(label)
        if key not in index:
            raise ValueError(f"class weight for {label!r}, which is not a training label")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"class weight of {label!r} must be a positive number, got {weight!r}")
        out[index[key]] = float(weight)
    return out


# -- the classifier a user holds --------------------------------------------------------------------------------
def _pad(ids: Sequence[Sequence[int]], dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids ``(N, T)`` and ``int64`` lengths ``(N,)`` (T at least 1)."""
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    width = max(int(lengths.max()) if len(lengths) else 1, 1)
    matrix: np.ndarray = np.zeros((len(ids), width), dtype)
    if len(ids):
        matrix[np.arange(width)[None, :] < lengths[:, None]] = np.fromiter(
            (t for x in ids for t in x), dtype, int(lengths.sum()))
    return matrix, lengths


class Classifier(Backend, HasPrecision):
    """A trained text classifier with its tokenizer and label names; ``precision`` ``bf16`` predicts under bf16
    autocast (the probabilities computed from the logits in float32).

    >>> clf = deepsem.load("runs/news")                       # doctest: +SKIP
    >>> clf.predict(["央行宣布降准"], k=2)                      # doctest: +SKIP
    [[('finance', 0.93), ('stocks', 0.05)]]
    """

    def __init__(self, model: TextClassifier, tokenizer: Tokenizer, labels: Sequence[str],
                 info: dict[str, Any] | None = None, precision: str = "fp32") -> None:
        labels = list(labels)
        if len(labels) != model.config.num_labels:
            raise ValueError(f"{len(labels)} labels for a model with {model.config.num_labels} outputs")
        if len(set(labels)) != len(labels) or not all(isinstance(y, str) and y for y in labels):
            raise ValueError("labels must be distinct non-empty strings")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = labels
        self.info = dict(info or {})
        self.precision = precision

    @property
    def multi_label(self) -> bool:
        return self.model.config.multi_label

    @property
    def threshold(self) -> float:
        """Multi-label: the probability from which a label is predicted."""
        return self.model.config.threshold

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the model directory (:func:`deepsem.modeldir.save_model_dir`; each file atomically,
        ``config.json`` last, with the label names)."""
        extra = {"labels": list(self.labels), **{k: v for k, v in self.info.items() if k not in _RESERVED}}
        return save_model_dir(directory, self.model, self.tokenizer, extra, task="classifier", tasks=model_fields())

    @classmethod
    def load(cls, directory: str | Path, precision: str = "fp32") -> Classifier:
        """Rebuild from ``config.json`` (validated, and checked against the weights file's header, before any tensor
        is allocated), tokenizer and weights."""
        path = Path(directory) / CONFIG_FILE

        def check_labels(config: dict[str, Any], model_config: ClassifierConfig) -> list[str]:
            labels = config.get("labels")
            if (not isinstance(labels, list) or not all(isinstance(y, str) and y for y in labels)
                    or len(set(labels)) != len(labels)):
                raise ConfigError(f"{path}: field 'labels' must be a list of distinct non-empty strings")
            if len(labels) != model_config.num_labels:
                raise ConfigError(f"{path}: field 'labels' has {len(labels)} labels but num_labels is "
                                  f"{model_config.num_labels}")
            return labels

        read = read_model_dir(
            directory, "classifier", "a classifier", tasks=model_fields(), check=check_labels,
            parse=lambda data, where: ClassifierConfig.from_dict(data, where=where), build=TextClassifier,
            tokenizer=lambda c: TokenizerSize(c.tower.vocab_size,
                                              f"classifier.tower.vocab_size is {c.tower.vocab_size}"))
        assert read.tokenizer is not None
        info = {k: v for k, v in read.config.items() if k not in _RESERVED}
        return cls(read.model, read.tokenizer, read.extra, info, precision)

    # -- prediction ------------------------------------------------------------------------------------------
    @overload
    def predict_proba(self, texts: str, batch_size: int = 1024) -> np.ndarray: ...
    @overload
    def predict_proba(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray: ...
    def predict_proba(self, texts: str | Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Probabilities ``(N, num_labels)`` float32 (``(num_labels,)`` for one string): a softmax over the
        labels, or one sigmoid per label for a multi-label model. Texts are batched by length."""
        if isinstance(texts, str):
            return self.predict_proba([texts], batch_size)[0]
        return self._proba_of_ids(self.tokenizer.encode_batch(list(texts)), batch_size)

    def _proba_of_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 1024) -> np.ndarray:
        out = np.zeros((len(ids), len(self.labels)), np.float32)
        if not ids:
            return out
        if self._onnx is not None:
            return run_batches(self._onnx["classifier"], ids, batch_size, len(self.labels), output=1)
        order = np.argsort(np.fromiter((len(x) for x in ids), np.int64, len(ids)), kind="stable")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    matrix, lengths = _pad([ids[r] for r in rows])
                    with autocast(self.precision):  # fp32: no autocast at all
                        logits = self.model(torch.from_numpy(matrix), torch.from_numpy(lengths))
                    out[rows] = self.model.probabilities(logits.float()).float().numpy()
        finally:
            self.model.train(was_training)
        return out

    def top_k(self, probs: np.ndarray, k: int | None = 1, threshold: float | None = None
              ) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable labels of each row of ``probs`` (all with ``k=None``), most probable
        first, as ``(label, probability)``; with ``threshold`` only those at least that probable."""
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        probs = np.atleast_2d(probs)
        take = len(self.labels) if k is None else min(k, len(self.labels))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :take]
        out = []
        for row, idx in zip(probs, order, strict=True):
            out.append([(self.labels[j], float(row[j])) for j in idx if threshold is None or row[j] >= threshold])
        return out

    @overload
    def predict(self, texts: str, k: int | None = 1, threshold: float | None = None,  # type: ignore[overload-overlap]
                batch_size: int = 1024) -> list[tuple[str, float]]: ...
    @overload
    def predict(self, texts: Sequence[str], k: int | None = 1, threshold: float | None = None,
                batch_size: int = 1024) -> list[list[tuple[str, float]]]: ...
    def predict(self, texts: str | Sequence[str], k: int | None = 1, threshold: float | None = None,
                batch_size: int = 1024) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """The ``k`` most probable labels of each text with their probabilities, most probable first.

        ``threshold`` keeps only labels at least that probable (for a multi-label model, ``k=None,
        threshold=clf.threshold`` gives its decisions). One string gives one list.
        """
        if isinstance(texts, str):
            return self.predict([texts], k, threshold, batch_size)[0]
        return self.top_k(self.predict_proba(texts, batch_size), k, threshold)

    def predict_labels(self, texts: Sequence[str], batch_size: int = 1024) -> list[str] | list[list[str]]:
        """The decision for each text: its most probable label, or (multi-label) every label whose
        probability reaches :attr:`threshold`."""
        probs = self.predict_proba(texts, batch_size)
        if self.multi_label:
            return [[self.labels[j] for j in np.flatnonzero(row >= self.threshold)] for row in probs]
        return [self.labels[j] for j in probs.argmax(1)]

    def __repr__(self) -> str:
        c = self.model.config
        kind = "multi-label" if c.multi_label else "single-label"
        return (f"Classifier(encoder={c.tower.encoder!r}, tokenizer={self.tokenizer.name!r}, "
                f"labels={len(self.labels)}, {kind})")


# -- evaluation ----------------------------------------------------------------------------------------------
def evaluate_classifier(
    classifier: Classifier,
    data: str | os.PathLike[str] | LabelledTexts,
    *,
    text_col: Column = 0,
    label_col: Column = 1,
    label_sep: str | None = None,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    confusion_png: str | os.PathLike[str] | None = None,
    top_confused: int = 5,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Score ``classifier`` on labelled data (a file or :class:`LabelledTexts`): see
    :func:`classification_metrics` for the keys. A label the model does not know is a bad row.
    ``label_sep`` defaults to the one the model was trained with. ``confusion_png``: also write the
    confusion matrix there (one label per text only); its path is returned under ``confusion_png``.
    """
    if confusion_png is not None and classifier.multi_label:
        raise ValueError("a confusion matrix needs one label per text; this is a multi-label model")
    sep = label_sep if label_sep is not None else str(classifier.info.get("label_sep", ","))
    options = {"text_col": text_col, "label_col": label_col, "multi_label": classifier.multi_label,
               "label_sep": sep, "fmt": fmt, "header": header, "skip_bad_rows": skip_bad_rows}
    labelled = as_labelled(data, classifier.labels, options)
    if not len(labelled):
        raise ValueError(f"{labelled.source or 'data'}: no labelled texts to evaluate")
    targets = _targets(labelled, classifier.labels, classifier.multi_label)
    t0 = time.perf_counter()
    probs = classifier.predict_proba(labelled.texts, batch_size)
    seconds = time.perf_counter() - t0
    out = classification_metrics(targets, probs, classifier.labels, multi_label=classifier.multi_label,
                                 threshold=classifier.threshold, top_confused=top_confused)
    out["predictions_per_second"] = round(len(labelled) / max(seconds, 1e-9), 1)
    if labelled.skipped.count:
        out["skipped_rows"] = labelled.skipped.count
    if confusion_png is not None:
        matrix = np.asarray(out["confusion"]["matrix"])
        out["confusion_png"] = str(plot_confusion(matrix, classifier.labels, confusion_png))
    return out


# -- training ---------------------------------------------------------------------------------------------------
def _check_tokenizer_fits(encoder: str, tokenizer: Tokenizer) -> None:
    from deepsem.towers import TRIGRAM_ENCODERS

    if encoder in TRIGRAM_ENCODERS and not isinstance(tokenizer, TrigramTokenizer):
        raise ValueError(f"encoder {encoder!r} reads letter trigrams: use tokenizer 'trigram', "
                         f"not {tokenizer.name!r}")


@dataclass
class _DataSide:
    """How a plan reads its training data: the collate, the batches of an epoch and their number."""

    collate: Callable[[Any], dict[str, Tensor]]
    batches: Callable[[int, np.random.Generator], Iterator[Any]]
    steps_per_epoch: int
    per_rank_batches: bool = False


def _plan(tok: Tokenizer, tcfg: TowerConfig, labels: list[str], head: dict[str, Any],
          dev_data: LabelledTexts | None, weights: np.ndarray | None, label_smoothing: float, info: dict[str, Any],
          data_side: Callable[[], _DataSide]) -> TrainingPlan:
    """The training plan of a classifier (the model built first, then ``data_side`` tokenises or streams the data):
    what the in-memory and the streamed paths share."""
    tcfg.vocab_size = tok.vocab_size
    _check_tokenizer_fits(tcfg.encoder, tok)
    multi_label = bool(head["multi_label"])
    ccfg = ClassifierConfig(tower=tcfg, num_labels=len(labels), **head)
    ccfg.validate()
    net = TextClassifier(ccfg)
    clf = Classifier(net, tok, labels)
    side = data_side()

    dev_targets = _targets(dev_data, labels, multi_label) if dev_data is not None else None
    dev_ids = tok.encode_batch(dev_data.texts) if dev_data is not None else []

    def evaluate() -> dict[str, float]:
        assert dev_targets is not None
        scores = classification_metrics(dev_targets, clf._proba_of_ids(dev_ids), labels,
                                        multi_label=multi_label, threshold=ccfg.threshold)
        return {k: scores[k] for k in ("accuracy", "macro_f1", "micro_f1")}

    def record_best(metrics: dict[str, float]) -> None:
        if metrics:
            info["dev_metrics"] = metrics
        clf.info = dict(info)

    loss = ClassificationLoss(net, weights=torch.from_numpy(weights) if weights is not None else None,
                              label_smoothing=label_smoothing)
    return TrainingPlan(
        wrapper=clf, loss=loss, collate=side.collate, batches=side.batches, steps_per_epoch=side.steps_per_epoch,
        evaluate=evaluate if dev_data is not None else None, metric="micro_f1" if multi_label else "accuracy",
        info=info, record_best=record_best, per_rank_batches=side.per_rank_batches,
    )


def train_classifier(
    data: str | os.PathLike[str] | LabelledTexts | None = None,
    out: str | os.PathLike[str] | None = None,
    dev: str | os.PathLike[str] | LabelledTexts | None = None,
    *,
    tokenizer: str | Tokenizer = "char",
    tokenizer_options: dict[str, Any] | None = None,
    tower: TowerConfig | dict[str, Any] | None = None,
    training: TrainConfig | dict[str, Any] | None = None,
    multi_label: bool = False,
    class_weights: str | Mapping[str, float] | None = None,
    text_col: Column = 0,
    label_col: Column = 1,
    label_sep: str = ",",
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    head_dropout: float = 0.1,
    label_smoothing: float = 0.0,
    ngram_buckets: int = 0,
    ngram_order: int = 2,
    ngram_dim: int = 16,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    vocab_sample: int | None = None,
    train: str | os.PathLike[str] | LabelledTexts | None = None,
) -> tuple[Classifier, TrainResult]:
    """Train a text classifier and save the best model (by dev accuracy; multi-label: micro-F1) to ``out``.

    ``data``/``dev``: files (see :func:`read_labelled`; ``text_col``, ``label_col``, ``label_sep``,
    ``fmt``, ``header``, ``skip_bad_rows`` apply to both) or :class:`LabelledTexts`. The labels are those of
    the training data (at least two); a dev row with another label is a bad row. ``tokenizer``: a name
    (learnt from the training texts with ``tokenizer_options``) or a tokenizer. ``tower``: the
    :class:`TowerConfig` (``vocab_size`` is set from the tokenizer; the ``dssm`` and ``cnn`` towers need
    the ``trigram`` tokenizer). ``training``: :class:`TrainConfig` (epochs, batch size, lr, clipping,
    ``max_minutes``, patience...; its pair-loss fields are not used). Loss: cross-entropy (with
    ``label_smoothing``), or BCE with logits when ``multi_label``; ``class_weights``: see
    :func:`compute_class_weights`. ``ngram_buckets`` > 0 adds a fastText-style bag of token n-grams next
    to the tower (see :class:`~deepsem.config.ClassifierConfig`). Without ``dev`` the model after the last
    step is kept.
    Run files (checkpoint, metrics.jsonl, training.png, result.json) go to ``run_dir`` (default
    ``out/training``); an interrupted run started again with the same data and settings resumes; with other
    ones it raises :class:`~deepsem.errors.ResumeMismatchError` (``resume=False`` starts over). ``progress``:
    a progress bar; None shows it only when stderr is a terminal. ``device``: where to train (default the CPU).
    ``train``: the old name of ``data``, still accepted.

    ``data`` a directory or a glob pattern of shards (TSV/CSV/JSONL/Parquet, mixed): they are streamed, never held
    in memory (:mod:`deepsem.data.stream`): one pass learns the label set with its counts (always over every row)
    and the vocabulary (over the first ``vocab_sample`` rows when given); each epoch reads the shards again
    through a shuffle buffer of ``shuffle_buffer`` texts with length buckets inside it, tokenising on the fly;
    under torchrun each rank reads its own part. ``dev`` stays a file read into memory.
    """
    t0 = time.perf_counter()
    data = renamed_argument("train_classifier", "data", data, "train", train)
    if out is None:
        raise TypeError("train_classifier() missing required argument: 'out'")
    cfg = training_config(training)
    check_precision(cfg.precision, device or "cpu")  # before any data is read
    options = {"text_col": text_col, "label_col": label_col, "multi_label": multi_label, "label_sep": label_sep,
               "fmt": fmt, "header": header, "skip_bad_rows": skip_bad_rows}
    tcfg = tower if isinstance(tower, TowerConfig) else TowerConfig.from_dict(tower or {}, "tower")
    head = {"multi_label": multi_label, "dropout": head_dropout, "ngram_buckets": ngram_buckets,
            "ngram_order": ngram_order, "ngram_dim": ngram_dim}
    if is_sharded(data):
        assert isinstance(data, str | os.PathLike)
        return _train_stream(data, out, dev, cfg, t0, options=options, tokenizer=tokenizer,
                             tokenizer_options=tokenizer_options, tcfg=tcfg, head=head, class_weights=class_weights,
                             label_smoothing=label_smoothing, run_dir=run_dir, resume=resume, progress=progress,
                             device=device, shuffle_buffer=shuffle_buffer, vocab_sample=vocab_sample)
    train_data = as_labelled(data, None, options)
    source = train_data.source or "training data"
    if not len(train_data):
        raise DataError(source, None, None, "no labelled texts to train on")
    labels = train_data.label_set()
    if len(labels) < 2:
        only = f"the label {labels[0]!r}" if labels else "no label"
        raise DataError(source, None, "label", f"all {len(train_data)} rows (lines {train_data.lines[0]}-"
                        f"{train_data.lines[-1]}) have {only}; a classifier needs at least two classes")
    targets = _targets(train_data, labels, multi_label)
    dev_data = as_labelled(dev, labels, options) if dev is not None else None
    if dev_data is not None and not len(dev_data):
        raise DataError(dev_data.source or "dev data", None, None, "no labelled texts in the dev data")
    weights = compute_class_weights(targets, labels, class_weights, multi_label)
    tower_settings = tcfg.to_dict()
    tower_settings.pop("vocab_size", None)  # set from the tokenizer
    fingerprint = run_fingerprint(
        cfg, **{"training data": data_fingerprint(train_data.texts, train_data.labels),
                "dev data": None if dev_data is None else data_fingerprint(dev_data.texts, dev_data.labels)},
        tokenizer=tokenizer_fingerprint(tokenizer, tokenizer_options), tower=tower_settings,
        task={"multi_label": multi_label, "class_weights": None if weights is None else weights.tolist(),
              "head_dropout": head_dropout, "label_smoothing": label_smoothing, "ngram_buckets": ngram_buckets,
              "ngram_order": ngram_order, "ngram_dim": ngram_dim})

    counts = Counter(y for row in train_data.labels for y in row)
    info: dict[str, Any] = {
        "training": cfg.to_dict(), "train_examples": len(train_data), "label_sep": label_sep,
        "label_counts": {y: counts[y] for y in labels},
        "class_weights": None if weights is None else dict(zip(labels, weights.tolist(), strict=True)),
    }
    if label_smoothing:
        info["label_smoothing"] = label_smoothing

    def build(tok: Tokenizer) -> TrainingPlan:
        def data_side() -> _DataSide:
            matrix, lengths = _pad(tok.encode_batch(train_data.texts), np.int32)  # int32: half the memory of int64
            target_t = torch.from_numpy(targets)

            def collate(rows: np.ndarray) -> dict[str, Tensor]:
                width = max(int(lengths[rows].max()), 1)
                return {"ids": torch.from_numpy(matrix[rows, :width].astype(np.int64)),
                        "lengths": torch.from_numpy(lengths[rows]), "targets": target_t[rows]}

            # one batch per bucket (length_buckets off): plain shuffled batches
            return _DataSide(collate, lambda epoch, rng: length_batches(
                lengths, cfg.batch_size, rng, _BUCKET_BATCHES if cfg.length_buckets else 1),
                (len(train_data) + cfg.batch_size - 1) // cfg.batch_size)

        return _plan(tok, tcfg, labels, head, dev_data, weights, label_smoothing, dict(info), data_side)

    return run_training(cfg, out, fingerprint, build, run_dir=run_dir, tokenizer=tokenizer,
                        tokenizer_options=tokenizer_options, texts=lambda: train_data.texts, resume=resume,
                        progress=progress, device=device, started=t0)


#: Batches a stream prepares (reads, shuffles, tokenises) in a background thread ahead of the training step.
STREAM_PREFETCH = 8


def _label_problem(source: str, labels: list[str], examples: int) -> None:
    """A :class:`DataError` when the training data cannot train a classifier: no rows, or fewer than two labels."""
    if not examples:
        raise DataError(source, None, None, "no labelled texts to train on")
    if len(labels) < 2:
        only = f"the label {labels[0]!r}" if labels else "no label"
        raise DataError(source, None, "label", f"all {examples} rows have {only}; a classifier needs at least "
                        "two classes")


def _train_stream(data: str | os.PathLike[str], out: str | os.PathLike[str],
                  dev: str | os.PathLike[str] | LabelledTexts | None, cfg: TrainConfig, started: float, *,
                  options: dict[str, Any], tokenizer: str | Tokenizer, tokenizer_options: dict[str, Any] | None,
                  tcfg: TowerConfig, head: dict[str, Any], class_weights: str | Mapping[str, float] | None,
                  label_smoothing: float, run_dir: str | os.PathLike[str] | None, resume: bool,
                  progress: bool | None, device: str | torch.device | None, shuffle_buffer: int,
                  vocab_sample: int | None) -> tuple[Classifier, TrainResult]:
    """:func:`train_classifier` of a directory or glob of shards, streamed (see :mod:`deepsem.data.stream`)."""
    if vocab_sample is not None and vocab_sample < 1:
        raise ValueError(f"vocab_sample must be >= 1 rows, got {vocab_sample}")
    if shuffle_buffer < cfg.batch_size:
        raise ValueError(f"shuffle_buffer ({shuffle_buffer} texts) must hold at least one batch ({cfg.batch_size})")
    shards = find_shards(data)
    stream = LabelledStream(shards, **options)
    multi_label = bool(head["multi_label"])
    # dev stays a file in memory, read before training; its labels are checked against the stream's in build
    dev_data = as_labelled(dev, None, options) if dev is not None else None
    if dev_data is not None and not len(dev_data):
        raise DataError(dev_data.source or "dev data", None, None, "no labelled texts in the dev data")
    tower_settings = tcfg.to_dict()
    tower_settings.pop("vocab_size", None)  # set from the tokenizer
    shown_weights = class_weights if class_weights is None or isinstance(class_weights, str) else dict(class_weights)
    fingerprint = run_fingerprint(
        cfg, **{"training data": data_fingerprint(shard_fingerprint(shards, shard_root(data)), dict(options)),
                "dev data": None if dev_data is None else data_fingerprint(dev_data.texts, dev_data.labels)},
        tokenizer=tokenizer_fingerprint(tokenizer, tokenizer_options), tower=tower_settings,
        task={**{k: v for k, v in head.items() if k != "dropout"}, "class_weights": shown_weights,
              "head_dropout": head["dropout"], "label_smoothing": label_smoothing,
              "stream": {"shuffle_buffer": shuffle_buffer, "vocab_sample": vocab_sample}})

    def build(tok: Tokenizer) -> TrainingPlan:
        rank, world = distributed_rank()  # the process group (under torchrun) is started by now
        local_batch = cfg.batch_size // world
        if local_batch < 1:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world} processes that split it")
        labels = stream.labels  # from the pass that learnt the vocabulary; a pass of its own when resuming
        _label_problem(os.fspath(data), labels, stream.examples)
        if dev_data is not None:
            as_labelled(dev_data, labels, options)  # a dev label the training data lacks is a bad row
        counts = stream.label_counts
        weights = _stream_class_weights(counts, stream.examples, labels, class_weights, multi_label)
        info: dict[str, Any] = {
            "training": cfg.to_dict(), "train_examples": stream.examples, "train_shards": len(shards),
            "label_sep": options["label_sep"], "label_counts": {y: counts[y] for y in labels},
            "class_weights": None if weights is None else dict(zip(labels, weights.tolist(), strict=True)),
        }
        if label_smoothing:
            info["label_smoothing"] = label_smoothing
        steps = stream.steps_per_epoch(local_batch, world)

        def data_side() -> _DataSide:
            def collate(batch: TextBatch) -> dict[str, Tensor]:
                matrix, lengths = _pad(batch.ids if batch.ids is not None else tok.encode_batch(batch.texts))
                return {"ids": torch.from_numpy(matrix), "lengths": torch.from_numpy(lengths),
                        "targets": torch.from_numpy(batch.targets)}

            return _DataSide(collate, lambda epoch, rng: stream.batches(
                epoch, batch_size=local_batch, seed=cfg.seed, steps=steps, rank=rank, world=world,
                shuffle_buffer=shuffle_buffer, by_length=cfg.length_buckets, tokens=TokenCache(tok),
                prefetch=STREAM_PREFETCH), steps, per_rank_batches=True)

        return _plan(tok, tcfg, labels, head, dev_data, weights, label_smoothing, info, data_side)

    result = run_training(cfg, out, fingerprint, build, run_dir=run_dir, tokenizer=tokenizer,
                          tokenizer_options=tokenizer_options, texts=lambda: stream.scan(vocab_sample),
                          resume=resume, progress=progress, device=device, started=started)
    if stream.report.count:
        print(f"{data}: {stream.report}")
    return result


def _stream_class_weights(counts: Mapping[str, int], examples: int, labels: list[str],
                          spec: str | Mapping[str, float] | None, multi_label: bool) -> np.ndarray | None:
    """:func:`compute_class_weights` from the label counts of a stream (the same numbers as from its targets)."""
    if spec is None:
        return None
    if multi_label:
        targets: np.ndarray = np.zeros((examples, len(labels)), np.float32)
        for j, y in enumerate(labels):
            targets[: counts[y], j] = 1.0
    else:
        targets = np.repeat(np.arange(len(labels), dtype=np.int64), [counts[y] for y in labels])
    return compute_class_weights(targets, labels, spec, multi_label)


register(Task(name="classifier", model_field="classifier", wrapper=Classifier, train=train_classifier,
              evaluate=evaluate_classifier, cli_group="classify", summary="text classification"))
