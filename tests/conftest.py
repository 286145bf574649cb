"""Shared fixtures: a tiny synthetic pair data set that a small model learns in seconds."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(2)

# 12 topics, each a set of Chinese characters; texts of one topic paraphrase each other
TOPICS = [
    "银行卡账户余额", "还款利息逾期", "密码登录验证", "借钱额度申请", "天气下雨晴朗", "火车站车票",
    "吃饭餐厅米饭", "学习考试学校", "电影音乐唱歌", "医院医生看病", "手机电话号码", "旅游酒店机场",
]


def make_pairs(n: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)

    def sentence(topic: int) -> str:
        chars = TOPICS[topic]
        return "".join(rng.choice(chars) for _ in range(rng.randint(3, 7)))

    rows = []
    for i in range(n):
        t = rng.randrange(len(TOPICS))
        if i % 2 == 0:
            rows.append((sentence(t), sentence(t), 1))
        else:
            other = (t + rng.randrange(1, len(TOPICS))) % len(TOPICS)
            rows.append((sentence(t), sentence(other), 0))
    return rows


def shake_peepholes_and_biases(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its peepholes and biases drawn from U(-0.5, 0.5): they start at 0, where a wrong mapping of
    them (an exporter's, say) would not show."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "weight_c" in name or "bias" in name:
                p.uniform_(-0.5, 0.5)
    return module


@pytest.fixture
def served_app(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], tuple[Any, Any]]:
    """Run a ``deepsem ... serve`` command line through Typer's runner with ``uvicorn.run`` caught: returns the
    result and the app it would have served (None when it refused), for a ``TestClient``."""
    from typer.testing import CliRunner

    from deepsem.cli import app

    captured: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda app_, **kw: captured.update(app=app_))

    def serve(argv: list[str]) -> tuple[Any, Any]:
        captured.clear()
        return CliRunner().invoke(app, argv), captured.get("app")

    return serve


def write_tsv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped on a machine without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pairs")
    return write_tsv(d / "train.tsv", make_pairs(1200, 1)), write_tsv(d / "dev.tsv", make_pairs(300, 2))


TINY_MODEL = {"tower": {"embedding_dim": 16, "hidden_size": 24, "output_dim": 16}}
TINY_TRAINING = {"epochs": 3, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 20}


@pytest.fixture(scope="session")
def trained_model_dir(pair_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import deepsem

    out = tmp_path_factory.mktemp("model") / "m"
    deepsem.train(pair_files[0], out, pair_files[1], model=TINY_MODEL, training=TINY_TRAINING, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A small cross-encoder (and its model directory) trained once for every two-stage test: the synthetic topics'
    pairs, 2 epochs."""
    import numpy as np

    from deepsem.data.pairs import TextPairs
    from deepsem.tasks.rerank import train_rerank

    rows = make_pairs(600, 5)
    pairs = TextPairs([a for a, _, _ in rows], [b for _, b, _ in rows], np.array([y for *_, y in rows], np.float32))
    out = tmp_path_factory.mktemp("tiny-rerank") / "ce"
    ce, _ = train_rerank(pairs, out, model={"hidden_size": 8, "embedding_dim": 8},
                         training={"epochs": 2, "batch_size": 32, "lr": 1e-2}, progress=False)
    return ce, out


class Killed(Exception):
    """What :func:`killed_at_step` raises in place of a training step: a run killed mid-way."""


@contextmanager
def killed_at_step(step: int) -> Iterator[None]:
    """Inside: every training run (any task's ``Trainer.fit``) raises :class:`Killed` at its ``step``-th forward,
    counted over the block, as a run killed there would stop; the trainer is whole again after the block."""
    from deepsem import trainer as train_module

    real_fit = train_module.Trainer.fit
    calls = {"n": 0}

    def killing_fit(self, resume=True):
        forward = self.forward

        def wrapped(batch):
            calls["n"] += 1
            if calls["n"] == step:
                raise Killed
            return forward(batch)

        self.forward = wrapped
        return real_fit(self, resume)

    train_module.Trainer.fit = killing_fit
    try:
        yield
    finally:
        train_module.Trainer.fit = real_fit
