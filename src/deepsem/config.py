"""Configuration dataclasses with a strict JSON round trip.

``from_dict`` rejects unknown keys and values of the wrong type or out of range *before* anything is
allocated, so a hand-edited or corrupt ``config.json`` fails with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

ENCODERS = ("lstm", "lstm-peephole", "lstm-coupled")
POOLINGS = ("last", "mean", "max", "last+max")
LOSSES = ("softmax", "pointwise", "hinge", "pointwise+softmax")
NEGATIVES = ("in-batch", "random", "both")
SCHEDULES = ("linear", "cosine", "constant")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _check_type(where: str, name: str, value: Any, annotation: Any) -> Any:
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
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


@dataclass
class TowerConfig(_Config):
    """One tower: token embedding -> recurrent encoder -> pooling -> linear + tanh semantic layer.

    Defaults: the best BQ settings measured on a 2-core CPU (bench/RESULTS.md). The LSTM-DSSM paper's
    tower is ``bidirectional=False, pooling="last"``.
    """

    encoder: str = "lstm-peephole"
    vocab_size: int = 2
    embedding_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "last+max"
    output_dim: int = 128
    dropout: float = 0.2
    embedding_dropout: float = 0.2

    def validate(self, where: str | None = None) -> None:
        w = where or "tower"
        _choice(w, "encoder", self.encoder, ENCODERS)
        _choice(w, "pooling", self.pooling, POOLINGS)
        for name in ("vocab_size", "embedding_dim", "hidden_size", "num_layers", "output_dim"):
            _positive(w, name, getattr(self, name))
        if self.vocab_size > 50_000_000 or self.embedding_dim * self.vocab_size > 2_000_000_000:
            raise ConfigError(f"{w}: vocab_size x embedding_dim is too large ({self.vocab_size})")
        for name in ("dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{w}: field {name!r} must be in [0, 1), got {value}")


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
    clip_norm: float | None = 1.0
    seed: int = 13
    eval_every: int | None = None  # steps between dev evaluations; None = once per epoch
    patience: int = 3  # dev evaluations without improvement before stopping
    checkpoint_every: int = 500
    max_minutes: float | None = None
    time_schedule: bool = True  # with max_minutes: the LR schedule runs on max(step, time) progress
    threads: int | None = None

    def validate(self, where: str | None = None) -> None:
        w = where or "training"
        _choice(w, "loss", self.loss, LOSSES)
        _choice(w, "negatives", self.negatives, NEGATIVES)
        _choice(w, "schedule", self.schedule, SCHEDULES)
        for name in ("epochs", "batch_size", "lr", "checkpoint_every", "patience"):
            _positive(w, name, getattr(self, name))
        for name in ("num_negatives", "margin", "weight_decay", "warmup", "softmax_weight"):
            _positive(w, name, getattr(self, name), allow_zero=True)
        if self.warmup >= 1:
            raise ConfigError(f"{w}: field 'warmup' is a fraction of the steps, got {self.warmup}")
        if self.clip_norm is not None:
            _positive(w, "clip_norm", self.clip_norm)
        if self.eval_every is not None:
            _positive(w, "eval_every", self.eval_every)
        if self.max_minutes is not None:
            _positive(w, "max_minutes", self.max_minutes)
        if self.negatives in ("random", "both") and self.num_negatives < 1:
            raise ConfigError(f"{w}: negatives={self.negatives!r} needs num_negatives >= 1")
