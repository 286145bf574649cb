"""Configuration dataclasses with a strict JSON round trip.

``from_dict`` rejects unknown keys and values of the wrong type or out of range *before* anything is
allocated, so a hand-edited or corrupt ``config.json`` fails with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

from deepsem.data.precision import PRECISIONS
from deepsem.errors import ConfigError  # re-exported: deepsem.config.ConfigError keeps working
from deepsem.towers import RECURRENT_ENCODERS, TOWERS, TRIGRAM_ENCODERS, build_tower  # noqa: F401  (re-exported)
from deepsem.towers.recurrent import HIDDEN_SIZE, NUM_LAYERS, build_rnn, recurrent_sizes, run_rnn  # noqa: F401

#: Every tower name, from the registry (:mod:`deepsem.towers`): the recurrent towers, dssm, cnn.
ENCODERS = tuple(TOWERS)
#: Per-encoder defaults of ``hidden_size`` / ``num_layers`` when they are left ``None``: the papers' DSSM
#: (300 -> 300 -> 128) and CLSM (300 feature maps); the recurrent towers the best BQ setting.
ENCODER_DEFAULTS: dict[str, tuple[int, int]] = {name: (spec.hidden_size, spec.num_layers)
                                                for name, spec in TOWERS.items()}
RECURRENT_DEFAULT = (HIDDEN_SIZE, NUM_LAYERS)
POOLINGS = ("last", "mean", "max", "last+max")
LOSSES = ("softmax", "pointwise", "hinge", "pointwise+softmax", "cosent", "cosent+softmax")
#: The losses with a CoSENT term (:func:`deepsem.losses.cosent_loss`): they rank labelled pairs against each other.
COSENT_LOSSES = ("cosent", "cosent+softmax")
#: CoSENT's scale of the cosine differences when ``TrainConfig.cosent_scale`` is unset (the CoSENT paper's).
COSENT_SCALE = 20.0
NEGATIVES = ("in-batch", "random", "both", "labelled", "hard")
SCHEDULES = ("linear", "cosine", "constant")

# Bounds of the size fields, checked by ``validate`` before anything is allocated, so that a hand-edited or hostile
# config.json fails in one line instead of asking for 512 GB. Far above any real use: the bench presets and the
# README use vocabularies up to a few hundred thousand rows, widths up to 384 and one to three layers.
#: Rows of one table: token / trigram vocabularies, n-gram buckets, items, categories, title tokens, user features.
MAX_ROWS = 50_000_000
#: Items of a recommender (each also an output row of its Faiss index).
MAX_ITEMS = 100_000_000
#: ``embedding_dim``, ``hidden_size``, ``output_dim``, ``ngram_dim``.
MAX_WIDTH = 16_384
#: ``num_layers`` of any tower.
MAX_LAYERS = 64
#: ``num_labels`` of a classifier.
MAX_LABELS = 1_000_000
#: ``max_history`` of a recommender (items the user tower reads).
MAX_HISTORY = 1_000_000
#: Elements of one weight tensor (torch and safetensors index them with 64 bits, but 2^31 float32 is already 8 GB).
MAX_TENSOR_ELEMENTS = 2**31 - 1
#: Parameters of one model: 10^9 float32 = 4 GB.
MAX_PARAMETERS = 1_000_000_000

def _check_type(where: str, name: str, value: Any, annotation: Any) -> Any:
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e300:  # float() of a huge JSON integer would raise OverflowError
            raise ConfigError(f"{where}: field {name!r} must be a finite number, got an integer of "
                              f"{value.bit_length()} bits")
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: field {name!r} must be a finite number, got {value!r}")
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: field {name!r} must be {hint.__name__}, got {value!r}")
        return value
    if typing.get_origin(hint) is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: field {name!r} must be an object, got {value!r}")
        return dict(value)
    return value


class _Config:
    """Mixin: strict ``from_dict`` / ``to_dict`` for the dataclasses below."""

    def validate(self, where: str | None = None) -> None:  # overridden where there are ranges to check
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Config) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> Self:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            hint = hints[name]
            if isinstance(hint, type) and issubclass(hint, _Config):
                kwargs[name] = hint.from_dict(value, f"{where}.{name}")
            else:
                kwargs[name] = _check_type(where, name, value, hint)
        obj = cls(**kwargs)
        obj.validate(where)
        return obj


def _choice(where: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: field {name!r} is {value!r}; expected one of {', '.join(choices)}")


def _positive(where: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: field {name!r} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _at_most(where: str, name: str, value: int, bound: int, constant: str) -> None:
    if value > bound:
        raise ConfigError(f"{where}: field {name!r} is too large: {value:,}, more than the {bound:,} deepsem allows "
                          f"(deepsem.config.{constant})")


def _check_sizes(where: str, tensors: list[tuple[str, int]]) -> None:
    """Each tensor's element count against :data:`MAX_TENSOR_ELEMENTS` and their sum against
    :data:`MAX_PARAMETERS`; ``tensors`` are (the fields that size it, elements)."""
    for what, elements in tensors:
        if elements > MAX_TENSOR_ELEMENTS:
            raise ConfigError(f"{where}: too large: the {what} weight would hold {elements:,} elements, more than "
                              f"the {MAX_TENSOR_ELEMENTS:,} of one tensor (deepsem.config.MAX_TENSOR_ELEMENTS)")
    total = sum(elements for _, elements in tensors)
    if total > MAX_PARAMETERS:
        what, largest = max(tensors, key=lambda t: t[1])
        raise ConfigError(f"{where}: too large: the model would have {total:,} parameters ({4 * total / 1e9:.1f} GB), "
                          f"more than the {MAX_PARAMETERS:,} deepsem allows (deepsem.config.MAX_PARAMETERS); "
                          f"the largest weight is {what} ({largest:,})")


@dataclass
class TowerConfig(_Config):
    """One tower: text ids -> ``encoder`` (see :mod:`deepsem.towers`) -> a ``output_dim`` tanh semantic layer.

    Recurrent towers: token embedding -> RNN/LSTM/GRU (``hidden_size`` per direction, ``num_layers``) ->
    pooling. ``dssm``: ``num_layers`` tanh layers of ``hidden_size`` over the bag of letter trigrams. ``cnn``:
    ``hidden_size`` convolution maps. ``hidden_size``/``num_layers`` left ``None`` take the encoder's default
    (:data:`ENCODER_DEFAULTS`). Defaults: the best BQ settings measured on a 2-core CPU (bench/RESULTS.md);
    the LSTM-DSSM paper's tower is ``bidirectional=False, pooling="last"``. ``orthogonal_init``: recurrent
    matrices start orthogonal (else torch's uniform init).
    """

    encoder: str = "lstm-peephole"
    vocab_size: int = 2
    embedding_dim: int = 128
    hidden_size: int | None = None  # None -> the encoder's default, filled in on creation
    num_layers: int | None = None
    bidirectional: bool = True
    pooling: str = "last+max"
    output_dim: int = 128
    dropout: float = 0.2
    embedding_dropout: float = 0.2
    orthogonal_init: bool = True

    def __post_init__(self) -> None:
        hidden, layers = ENCODER_DEFAULTS.get(self.encoder, RECURRENT_DEFAULT)
        if self.hidden_size is None:
            self.hidden_size = hidden
        if self.num_layers is None:
            self.num_layers = layers

    def validate(self, where: str | None = None) -> None:
        w = where or "tower"
        _choice(w, "encoder", self.encoder, ENCODERS)
        _choice(w, "pooling", self.pooling, POOLINGS)
        for name in ("vocab_size", "embedding_dim", "hidden_size", "num_layers", "output_dim"):
            _positive(w, name, getattr(self, name))
        _at_most(w, "vocab_size", self.vocab_size, MAX_ROWS, "MAX_ROWS")
        for name in ("embedding_dim", "hidden_size", "output_dim"):
            _at_most(w, name, getattr(self, name), MAX_WIDTH, "MAX_WIDTH")
        _at_most(w, "num_layers", self.num_layers, MAX_LAYERS, "MAX_LAYERS")  # type: ignore[arg-type]
        for name in ("dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{w}: field {name!r} must be in [0, 1), got {value}")
        _check_sizes(w, self.tensor_sizes())

    def tensor_sizes(self, prefix: str = "") -> list[tuple[str, int]]:
        """(name, elements) of the tower's weight matrices, an estimate of its size before it is built."""
        return TOWERS[self.encoder].sizes(self, prefix)


@dataclass
class ModelConfig(_Config):
    """A two-tower model: query tower, document tower (shared or separate), relevance = cosine."""

    tower: TowerConfig = field(default_factory=TowerConfig)
    shared_towers: bool = True
    gamma: float = 10.0
    learn_gamma: bool = True
    threshold: float | None = None  # decision threshold on the cosine, chosen on dev data

    def validate(self, where: str | None = None) -> None:
        _positive(where or "model", "gamma", self.gamma)
        self.tower.validate(f"{where}.tower" if where else None)
        _check_sizes(where or "model", self.tensor_sizes())

    def tensor_sizes(self) -> list[tuple[str, int]]:
        """(name, elements) of the weight matrices: one tower, or two when they are not shared."""
        sizes = self.tower.tensor_sizes("tower: ")
        return sizes if self.shared_towers else sizes + self.tower.tensor_sizes("doc tower: ")


@dataclass
class TrainConfig(_Config):
    """How to train: loss, negatives, optimiser, schedule, stopping and checkpoints."""

    loss: str = "pointwise+softmax"
    negatives: str = "in-batch"
    num_negatives: int = 4
    margin: float = 0.3
    softmax_weight: float = 1.0
    symmetric: bool = True  # softmax both ways (D -> Q too) when the towers are shared
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    schedule: str = "linear"
    clip_norm: float | None = 1.0  # clip the global gradient norm to this (None: off)
    clip_value: float | None = None  # clip every gradient element to [-v, v] first (None: off)
    seed: int = 13
    eval_every: int | None = None  # steps between dev evaluations; None = once per epoch
    patience: int = 3  # dev evaluations without improvement before stopping
    checkpoint_every: int = 500
    max_minutes: float | None = None
    max_steps: int | None = None  # stop after this many steps, the LR schedule fitted to them (None: epochs decide)
    time_schedule: bool = True  # with max_minutes: the LR schedule runs on max(step, time) progress
    threads: int | None = None
    length_buckets: bool = True  # batches of similar lengths (shuffled); a recurrent tower runs fewer pad steps
    precision: str = "fp32"  # "bf16": forward and loss under bf16 autocast; weights and optimiser state stay fp32
    #: under DDP, in-batch negatives from every rank's documents (the global batch); False: each rank's local batch
    gather_negatives: bool = True
    #: with negatives "hard": mine them again with the current model (dense) every this many epochs (None: never)
    remine_every: int | None = None
    #: keep an exponential moving average of the weights (Polyak averaging), updated after every optimiser step
    #: with this decay (warmed up as ``min(decay, (1 + t) / (10 + t))``); evaluation and the saved model use the
    #: averaged weights, training continues from the raw ones (None: off)
    ema_decay: float | None = None
    #: with a CoSENT loss: the scale of its cosine differences (None: :data:`COSENT_SCALE`, 20)
    cosent_scale: float | None = None

    def validate(self, where: str | None = None) -> None:
        w = where or "training"
        _choice(w, "loss", self.loss, LOSSES)
        _choice(w, "precision", self.precision, PRECISIONS)
        _choice(w, "negatives", self.negatives, NEGATIVES)
        _choice(w, "schedule", self.schedule, SCHEDULES)
        for name in ("epochs", "batch_size", "lr", "checkpoint_every", "patience"):
            _positive(w, name, getattr(self, name))
        for name in ("num_negatives", "margin", "weight_decay", "warmup", "softmax_weight"):
            _positive(w, name, getattr(self, name), allow_zero=True)
        if self.warmup >= 1:
            raise ConfigError(f"{w}: field 'warmup' is a fraction of the steps, got {self.warmup}")
        for name in ("clip_norm", "clip_value"):
            if getattr(self, name) is not None:
                _positive(w, name, getattr(self, name))
        if self.eval_every is not None:
            _positive(w, "eval_every", self.eval_every)
        if self.max_minutes is not None:
            _positive(w, "max_minutes", self.max_minutes)
        if self.max_steps is not None:
            _positive(w, "max_steps", self.max_steps)
        if self.negatives in ("random", "both", "labelled", "hard") and self.num_negatives < 1:
            raise ConfigError(f"{w}: negatives={self.negatives!r} needs num_negatives >= 1")
        if self.remine_every is not None:
            _positive(w, "remine_every", self.remine_every)
            if self.negatives != "hard":
                raise ConfigError(f"{w}: remine_every re-mines hard negatives: it needs negatives='hard'")
        if self.cosent_scale is not None:
            _positive(w, "cosent_scale", self.cosent_scale)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"{w}: field 'ema_decay' is the weight average's decay, between 0 and 1 (exclusive, "
                              f"e.g. 0.999); got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        """The fields, less ``max_steps``, ``remine_every``, ``ema_decay`` and ``cosent_scale`` when unset: the settings
        (and so the run fingerprints and saved configs) of every run without them stay as they were before the
        fields, and resume."""
        out = super().to_dict()
        for name in ("max_steps", "remine_every", "ema_decay", "cosent_scale"):
            if out.get(name) is None:
                del out[name]
        return out


@dataclass
class ClassifierConfig(_Config):
    """A text classifier: one tower -> dropout -> a linear layer of ``num_labels`` logits.

    ``multi_label``: each label is a separate yes/no decision (sigmoid per label, trained with BCE); otherwise
    the labels exclude each other (softmax, cross-entropy). ``threshold``: the probability at which a label
    is predicted in multi-label mode. ``dropout``: applied to the tower's vector before the linear layer.

    ``ngram_buckets`` > 0 adds fastText-style features next to the tower: the mean of ``ngram_dim``-wide
    embeddings of the text's tokens and of its token n-grams (orders 2 to ``ngram_order``, hashed into
    ``ngram_buckets`` rows), concatenated to the tower's vector. 0 (the default): the tower alone.
    """

    tower: TowerConfig = field(default_factory=TowerConfig)
    num_labels: int = 2
    multi_label: bool = False
    dropout: float = 0.1
    threshold: float = 0.5
    ngram_buckets: int = 0
    ngram_order: int = 2
    ngram_dim: int = 16

    def validate(self, where: str | None = None) -> None:
        w = where or "classifier"
        if self.num_labels < (1 if self.multi_label else 2):
            raise ConfigError(f"{w}: field 'num_labels' must be >= {1 if self.multi_label else 2}, "
                              f"got {self.num_labels}")
        _at_most(w, "num_labels", self.num_labels, MAX_LABELS, "MAX_LABELS")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{w}: field 'dropout' must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{w}: field 'threshold' must be in (0, 1), got {self.threshold}")
        _positive(w, "ngram_buckets", self.ngram_buckets, allow_zero=True)
        _positive(w, "ngram_dim", self.ngram_dim)
        _at_most(w, "ngram_buckets", self.ngram_buckets, MAX_ROWS, "MAX_ROWS")
        _at_most(w, "ngram_dim", self.ngram_dim, MAX_WIDTH, "MAX_WIDTH")
        if not 2 <= self.ngram_order <= 5:
            raise ConfigError(f"{w}: field 'ngram_order' must be in [2, 5], got {self.ngram_order}")
        self.tower.validate(f"{w}.tower")
        _check_sizes(w, self.tensor_sizes())

    def tensor_sizes(self) -> list[tuple[str, int]]:
        """(name, elements) of the weight matrices: the tower, the n-gram table, the output layer."""
        sizes = self.tower.tensor_sizes("tower: ")
        width = self.tower.output_dim
        if self.ngram_buckets > 0:
            rows = self.tower.vocab_size + self.ngram_buckets
            sizes.append((f"(tower.vocab_size + ngram_buckets) x ngram_dim ({rows:,} x {self.ngram_dim:,})",
                          rows * self.ngram_dim))
            width += self.ngram_dim
        sizes.append((f"features x num_labels ({width:,} x {self.num_labels:,})", width * self.num_labels))
        return sizes


RECOMMEND_NEGATIVES = ("full", "in-batch", "sampled")
TITLE_ENCODERS = ("none", "bag", *ENCODERS)


@dataclass
class RecommenderConfig(_Config):
    """A two-tower recommender (see :mod:`deepsem.models.recommender`).

    Item tower: item-id embedding (``embedding_dim``) + mean embedding of its categories + a vector of its title
    -> a linear layer to ``output_dim``. The title vector is the mean embedding of its words (``title_encoder=
    "bag"``), or any text tower of :mod:`deepsem.towers` (``"dssm"``, ``"cnn"`` over letter trigrams, ``"gru"``,
    ``"lstm"``... over words) with an ``embedding_dim`` output; ``"none"``: no title. User tower:
    the same item inputs, step by step through ``encoder`` (any recurrent tower; unidirectional, so the vector at
    a step has seen only the items up to it) of ``hidden_size`` x ``num_layers``, plus the mean embedding of the
    user's features -> a linear layer to ``output_dim``. Both vectors are L2-normalised; the score is
    ``gamma * cosine``. ``max_history``: the most recent items the user tower reads.
    """

    n_items: int = 1  # item rows 1..n_items; row 0 is padding
    n_categories: int = 1
    n_title_tokens: int = 1
    n_user_features: int = 1
    encoder: str = "lstm-peephole"
    title_encoder: str = "bag"
    embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    output_dim: int = 64
    dropout: float = 0.2
    max_history: int = 50
    gamma: float = 10.0
    learn_gamma: bool = True
    orthogonal_init: bool = True

    def validate(self, where: str | None = None) -> None:
        w = where or "recommender"
        _choice(w, "encoder", self.encoder, RECURRENT_ENCODERS)
        _choice(w, "title_encoder", self.title_encoder, TITLE_ENCODERS)
        for name in ("n_items", "n_categories", "n_title_tokens", "n_user_features", "embedding_dim", "hidden_size",
                     "num_layers", "output_dim", "max_history", "gamma"):
            _positive(w, name, getattr(self, name))
        _at_most(w, "n_items", self.n_items, MAX_ITEMS, "MAX_ITEMS")
        for name in ("n_categories", "n_title_tokens", "n_user_features"):
            _at_most(w, name, getattr(self, name), MAX_ROWS, "MAX_ROWS")
        for name in ("embedding_dim", "hidden_size", "output_dim"):
            _at_most(w, name, getattr(self, name), MAX_WIDTH, "MAX_WIDTH")
        _at_most(w, "num_layers", self.num_layers, MAX_LAYERS, "MAX_LAYERS")
        _at_most(w, "max_history", self.max_history, MAX_HISTORY, "MAX_HISTORY")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{w}: field 'dropout' must be in [0, 1), got {self.dropout}")
        _check_sizes(w, self.tensor_sizes())

    def tensor_sizes(self) -> list[tuple[str, int]]:
        """(name, elements) of the weight matrices of both towers."""
        e, h, o = self.embedding_dim, self.hidden_size, self.output_dim
        sizes = [(f"(n_items + 1) x embedding_dim ({self.n_items + 1:,} x {e:,})", (self.n_items + 1) * e),
                 (f"(n_categories + 1) x embedding_dim ({self.n_categories + 1:,} x {e:,})",
                  (self.n_categories + 1) * e),
                 (f"(n_user_features + 1) x hidden_size ({self.n_user_features + 1:,} x {h:,})",
                  (self.n_user_features + 1) * h),
                 *recurrent_sizes(self.encoder, e, h, self.num_layers, prefix="user tower: "),
                 (f"embedding_dim x output_dim ({e:,} x {o:,})", e * o),
                 (f"hidden_size x output_dim ({h:,} x {o:,})", h * o)]
        if self.title_encoder == "bag":
            sizes.append((f"(n_title_tokens + 1) x embedding_dim ({self.n_title_tokens + 1:,} x {e:,})",
                          (self.n_title_tokens + 1) * e))
        elif self.title_encoder != "none":
            title = TowerConfig(encoder=self.title_encoder, vocab_size=self.n_title_tokens + 1, embedding_dim=e,
                                output_dim=e)
            sizes += title.tensor_sizes("title tower (n_title_tokens + 1 rows): ")
        return sizes


@dataclass
class CrossEncoderConfig(_Config):
    """An ESIM cross-encoder (Chen et al., 2017; see :mod:`deepsem.models.cross_encoder`) that reads a query and a
    document together and gives one relevance logit.

    Token embedding (``embedding_dim``) -> a BiLSTM (``encoder``, any recurrent tower cell; ``hidden_size`` per
    direction) over each text -> soft alignment both ways -> [a; ã; a-ã; a*ã] -> a ReLU projection to
    ``hidden_size`` -> a composition BiLSTM -> mean and max pooling of both texts -> an MLP of ``hidden_size`` tanh
    units -> the logit. ``exact_match``: each step's enhancement also carries whether its token occurs in the other
    text (a word-overlap flag; off in directories written before it, which load as they were). ``threshold``: the
    probability from which a pair is predicted relevant (chosen on dev data; below 0 or above 1 when every dev pair
    was best called relevant, or irrelevant).
    """

    encoder: str = "lstm-peephole"
    vocab_size: int = 2
    embedding_dim: int = 128
    hidden_size: int = 96
    dropout: float = 0.2
    embedding_dropout: float = 0.1
    orthogonal_init: bool = True
    exact_match: bool = False
    threshold: float | None = None

    def validate(self, where: str | None = None) -> None:
        w = where or "cross_encoder"
        _choice(w, "encoder", self.encoder, RECURRENT_ENCODERS)
        for name in ("vocab_size", "embedding_dim", "hidden_size"):
            _positive(w, name, getattr(self, name))
        _at_most(w, "vocab_size", self.vocab_size, MAX_ROWS, "MAX_ROWS")
        for name in ("embedding_dim", "hidden_size"):
            _at_most(w, name, getattr(self, name), MAX_WIDTH, "MAX_WIDTH")
        for name in ("dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{w}: field {name!r} must be in [0, 1), got {value}")
        _check_sizes(w, self.tensor_sizes())

    def tensor_sizes(self) -> list[tuple[str, int]]:
        """(name, elements) of the weight matrices: embedding, both BiLSTMs, projection and MLP."""
        v, e, h = self.vocab_size, self.embedding_dim, self.hidden_size
        return [(f"vocab_size x embedding_dim ({v:,} x {e:,})", v * e),
                *recurrent_sizes(self.encoder, e, h, 1, 2, "encoder: "),
                (f"8 hidden_size x hidden_size ({8 * h:,} x {h:,})", (8 * h + int(self.exact_match)) * h),
                *recurrent_sizes(self.encoder, h, h, 1, 2, "composition: "),
                (f"8 hidden_size x hidden_size ({8 * h:,} x {h:,})", 8 * h * h)]
