"""bf16 mixed precision (issue 16): training and encoding under bf16 autocast agree with float32 within the stated
tolerances for every tower, the default stays exactly float32, a bf16 run is kept in the run's settings and old
checkpoints (without the field) still resume.

Tolerances, for bf16's 8-bit mantissa (relative rounding 2^-9 ~ 0.2%): vectors at cosine >= 0.9995 to float32's; a
training loss within 1% and each parameter's gradient at cosine >= 0.995 to float32's, on the same weights and batch
(measured over two seeds: worst cosines 0.99996 and 0.9993, worst loss 0.2%).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_pairs
from torch import Tensor

import deepsem
from deepsem.config import ModelConfig, TrainConfig
from deepsem.data import precision as precision_module
from deepsem.data.batches import PairCollate, PairSet, TextTable
from deepsem.data.precision import autocast, bf16_supported, check_precision
from deepsem.errors import ConfigError, ResumeMismatchError
from deepsem.losses import MatchingLoss
from deepsem.models import TwoTowerModel
from deepsem.nn.lstm import LSTM
from deepsem.tasks.matching import SemanticModel
from deepsem.text import build_tokenizer
from deepsem.towers.recurrent import run_rnn
from deepsem.trainer import run_fingerprint

#: What asks for precision="bf16" needs a CPU that has it; autocast itself (emulated elsewhere) runs on any CPU.
needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")

FIXTURES = Path(__file__).parent / "fixtures" / "model_dirs_v1"
#: The texts the fixtures' expected answers were recorded for (tests/fixtures/make_model_dirs_v1.py).
FIXTURE_TEXTS = ["怎么还款", "如何还钱", "借款额度", "hello world", "我爱北京天安门", "good day"]
TEXTS = ["银行卡余额", "天气晴朗", "手机号码怎么改", "借款 loan 还款", "a", "信用卡逾期了会怎样影响征信记录呢"]
#: Every tower, with the settings that exercise the most code: bidirectional recurrent towers with last+max pooling.
TOWERS = ["dssm", "cnn", "rnn", "gru", "lstm", "lstm-peephole", "lstm-coupled"]
VECTOR_COSINE = 0.9995
LOSS_RTOL = 0.01
GRAD_COSINE = 0.995


def _tower(encoder: str) -> dict[str, Any]:
    tower: dict[str, Any] = {"encoder": encoder, "output_dim": 32, "embedding_dim": 16, "hidden_size": 24,
                             "dropout": 0.0, "embedding_dropout": 0.0}
    if encoder not in ("dssm", "cnn"):
        tower.update(bidirectional=True, pooling="last+max")
    return tower


def _semantic(encoder: str, seed: int = 0) -> SemanticModel:
    pairs = make_pairs(40, seed)
    texts = [t for a, b, _ in pairs for t in (a, b)] + TEXTS
    tok = build_tokenizer("trigram" if encoder in ("dssm", "cnn") else "char", iter(texts))
    config = ModelConfig.from_dict({"tower": {**_tower(encoder), "vocab_size": tok.vocab_size}})
    torch.manual_seed(seed)
    return SemanticModel(TwoTowerModel(config), tok)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# -- the probe and the switch ----------------------------------------------------------------------------------
def test_check_precision_refuses_unknown_names_and_devices_without_bf16(monkeypatch: pytest.MonkeyPatch):
    check_precision("fp32")
    with pytest.raises(ConfigError, match="precision 'fp16'; expected one of fp32, bf16"):
        check_precision("fp16")
    monkeypatch.setattr(precision_module, "_cpu_bf16", lambda: False)
    check_precision("fp32")  # fp32 is always possible
    with pytest.raises(ConfigError, match="--precision bf16 on cpu: this CPU has neither AVX512-BF16 nor AMX"):
        check_precision("bf16", "cpu")
    with pytest.raises(ConfigError, match="precision"):
        SemanticModel.load(FIXTURES / "two_tower", precision="bf16")
    with pytest.raises(ConfigError, match="field 'precision' is 'half'"):
        TrainConfig.from_dict({"precision": "half"})


def test_the_probe_agrees_with_the_cpu_flags_and_asks_cuda(monkeypatch: pytest.MonkeyPatch):
    """On x86 torch's probe against the kernel's CPU flags (an independent reading); CUDA's answer is torch's, and
    a device deepsem does not train on has none."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "flags" in cpuinfo.read_text():
        flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
        assert precision_module._cpu_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not bf16_supported("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for answer in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, a=answer: a)
        assert bf16_supported("cuda:0") is answer
    with pytest.raises(ConfigError, match="--precision bf16 on cuda:0: cuda:0 does not support bfloat16"):
        check_precision("bf16", "cuda:0")
    assert not bf16_supported("meta")


def test_fp32_is_no_autocast_and_bf16_is():
    with autocast("fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_default_encoding_is_exactly_the_float32_computation():
    """The default path is untouched: the vectors of every old model directory as they were (fixture, 1e-6 as in
    test_modeldir), bit for bit what the model computes in float32 without autocast, and precision='fp32' is it."""
    model = deepsem.load(FIXTURES / "two_tower")
    assert model.precision == "fp32"
    vectors = model.encode(FIXTURE_TEXTS)
    np.testing.assert_allclose(vectors, np.load(FIXTURES / "two_tower_expected.npy"), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(vectors, deepsem.load(FIXTURES / "two_tower", precision="fp32")
                                  .encode(FIXTURE_TEXTS))
    ids = [model.tokenizer.encode(text) for text in FIXTURE_TEXTS]
    order = np.argsort([len(x) for x in ids], kind="stable")  # one length-sorted batch, as encode_texts pads it
    lengths = torch.tensor([len(ids[r]) for r in order])
    batch = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(order):
        batch[i, : len(ids[r])] = torch.tensor(ids[r])
    with torch.inference_mode():
        ref = np.empty_like(vectors)
        ref[order] = model.model.encode(batch, lengths, "query").numpy()
    np.testing.assert_array_equal(vectors, ref)


# -- encoding ----------------------------------------------------------------------------------------------------
@needs_bf16
@pytest.mark.parametrize("encoder", TOWERS)
def test_bf16_vectors_are_float32_and_close_to_fp32(encoder: str):
    model = _semantic(encoder)
    texts = TEXTS + [a for a, _, _ in make_pairs(30, 5)]
    ref = model.encode(texts)
    model.precision = "bf16"
    got = model.encode(texts)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised again in float32
    assert _cosines(got, ref).min() >= VECTOR_COSINE
    assert not np.array_equal(got, ref)  # bf16 really ran: it rounds


@needs_bf16
def test_load_with_precision_gives_every_task_bf16_answers_close_to_the_old_fixtures():
    """deepsem.load(dir, precision='bf16') of the model directories written before precisions existed: the same
    answers as recorded then, within bf16's tolerance."""
    model = deepsem.load(FIXTURES / "two_tower", precision="bf16")
    assert model.precision == "bf16"
    assert _cosines(model.encode(FIXTURE_TEXTS), np.load(FIXTURES / "two_tower_expected.npy")).min() >= VECTOR_COSINE
    clf = deepsem.load(FIXTURES / "classifier", precision="bf16")
    assert clf.precision == "bf16"
    np.testing.assert_allclose(clf.predict_proba(FIXTURE_TEXTS), np.load(FIXTURES / "classifier_expected.npy"),
                               atol=1e-2)
    rec = deepsem.load(FIXTURES / "recommender", precision="bf16")
    fp32 = deepsem.load(FIXTURES / "recommender")
    expected = json.loads((FIXTURES / "recommender_expected.json").read_text())
    histories = expected["histories"]
    known = [h for h in histories if all(item in rec.catalogue.index for item in h)]
    assert known
    got, ref = rec.user_vectors(known), fp32.user_vectors(known)
    assert got.dtype == np.float32 and _cosines(got, ref).min() >= VECTOR_COSINE
    for history, answer in zip(histories, expected["answers"], strict=True):
        scores = dict(rec.recommend(history, k=len(rec.catalogue.ids)))
        for item, score in answer:
            assert scores[item] == pytest.approx(score, abs=1e-2)


# -- deepsem's LSTM under autocast -------------------------------------------------------------------------------
@pytest.mark.parametrize("peephole,coupled", [(False, False), (True, False), (False, True), (True, True)])
def test_custom_lstm_runs_in_float32_under_autocast(peephole: bool, coupled: bool):
    """Its in-place gate arithmetic would meet autocast's bf16 matmul outputs (a dtype error when bidirectional,
    gates rounded to bf16 otherwise): run_rnn runs it in float32, with the same outputs and gradients as without
    autocast, for training (the hand-written backward) and inference alike."""
    torch.manual_seed(1)
    rnn = LSTM(8, 6, batch_first=True, bidirectional=True, peephole=peephole, coupled=coupled)
    x = torch.randn(5, 7, 8)
    lengths = torch.tensor([7, 3, 5, 1, 6])

    def run(bf16: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        rnn.zero_grad()
        xi = x.clone().requires_grad_(True)
        with autocast("bf16" if bf16 else "fp32"):
            out, h_n = run_rnn(rnn, xi, lengths)
        (out.sum() + h_n.square().sum()).backward()
        assert xi.grad is not None
        return out, h_n, [xi.grad] + [p.grad.clone() for p in rnn.parameters() if p.grad is not None]

    out32, h32, grads32 = run(False)
    out16, h16, grads16 = run(True)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, out32, rtol=0, atol=0)
    torch.testing.assert_close(h16, h32, rtol=0, atol=0)
    for g16, g32 in zip(grads16, grads32, strict=True):
        torch.testing.assert_close(g16, g32, rtol=0, atol=0)
    with torch.inference_mode(), autocast("bf16"):
        inf_out, inf_h = run_rnn(rnn, x, lengths)
    torch.testing.assert_close(inf_out, out32.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(inf_h, h32.detach(), rtol=1e-6, atol=1e-6)


# -- training ----------------------------------------------------------------------------------------------------
def _batch(model: SemanticModel, cfg: TrainConfig) -> dict[str, Tensor]:
    pairs = make_pairs(48, 3)
    table = TextTable(model.tokenizer)
    labels = np.array([y for _, _, y in pairs], np.float32)
    pair_set = PairSet.from_texts(table, [a for a, _, _ in pairs], [b for _, b, _ in pairs], labels)
    collate = PairCollate(table, pair_set, np.random.default_rng(0), 0)
    return collate(np.arange(len(pairs)))


@pytest.mark.parametrize("encoder", TOWERS)
def test_bf16_training_loss_and_gradients_match_fp32(encoder: str):
    """The same weights and batch: the loss under bf16 autocast within 1% of float32's, each parameter's gradient
    (float32, as the weights) at cosine >= 0.995 to float32's."""
    model = _semantic(encoder, seed=2)
    cfg = TrainConfig()
    loss_fn = MatchingLoss(model.model, cfg).train()
    batch = _batch(model, cfg)

    def step(precision: str) -> tuple[float, dict[str, Tensor]]:
        loss_fn.zero_grad()
        with autocast(precision):
            loss = loss_fn(batch)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in loss_fn.named_parameters() if p.grad is not None}

    loss32, grads32 = step("fp32")
    loss16, grads16 = step("bf16")
    assert loss16 == pytest.approx(loss32, rel=LOSS_RTOL)
    assert loss16 != loss32  # bf16 really ran
    assert set(grads16) == set(grads32)
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == torch.float32
        if float(g32.norm()) < 1e-8:
            continue
        cosine = float(torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0))
        assert cosine >= GRAD_COSINE, f"{encoder} {name}: gradient cosine {cosine:.4f}"


def _train(tmp_path: Path, precision: str, out: str = "m", **training: Any) -> tuple[Any, Any]:
    pairs = make_pairs(64, 11)
    data = tmp_path / "train.tsv"
    data.write_text("".join(f"{a}\t{b}\t{y}\n" for a, b, y in pairs), encoding="utf-8")
    return deepsem.train(data, out=tmp_path / out, tokenizer="char",
                         model={"tower": {**_tower("lstm-peephole")}},
                         training={"epochs": 3, "batch_size": 16, "lr": 0.01, "seed": 3, "precision": precision,
                                   **training}, progress=False)


@needs_bf16
def test_bf16_training_runs_under_autocast_and_lowers_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: list[torch.dtype] = []
    original = MatchingLoss.forward

    def spy(self: MatchingLoss, batch: dict[str, Tensor]) -> Tensor:
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return original(self, batch)

    monkeypatch.setattr(MatchingLoss, "forward", spy)
    model, result = _train(tmp_path, "bf16")
    assert seen and set(seen) == {torch.bfloat16}  # every training step, nothing else
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["training"]["precision"] == "bf16"  # in the run's training settings
    weights = dict(model.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in weights.values())  # the weights stay float32
    assert model.precision == "fp32"  # the saved model loads in the default precision


def test_fingerprint_of_fp32_is_that_of_runs_before_the_field():
    """A checkpoint written before ``precision`` existed has no such field in its fingerprint: an fp32 run's
    fingerprint leaves it out too (so it resumes), a bf16 run's has it (so it does not)."""
    old = run_fingerprint(TrainConfig())["training"]
    assert "precision" not in old
    assert TrainConfig.from_dict({}).precision == "fp32"  # an old training config means fp32
    assert run_fingerprint(TrainConfig(precision="bf16"))["training"] == {**old, "precision": "bf16"}


@needs_bf16
def test_resume_keeps_the_precision_and_old_checkpoints_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    _train(tmp_path, "fp32", out="old", epochs=1)
    state = json.loads((tmp_path / "old" / "training" / "checkpoint" / "trainer_state.json").read_text())
    assert "precision" not in state["fingerprint"]["training"]  # as every checkpoint written before the field
    capsys.readouterr()
    _train(tmp_path, "fp32", out="old", epochs=1)
    assert "resumed from" in capsys.readouterr().out

    _train(tmp_path, "bf16", out="new", epochs=1)
    state = json.loads((tmp_path / "new" / "training" / "checkpoint" / "trainer_state.json").read_text())
    assert state["fingerprint"]["training"]["precision"] == "bf16"
    capsys.readouterr()
    _train(tmp_path, "bf16", out="new", epochs=1)
    assert "resumed from" in capsys.readouterr().out
    with pytest.raises(ResumeMismatchError, match=re.escape('training.precision "bf16" -> "(unset)"')):
        _train(tmp_path, "fp32", out="new", epochs=1)
    with pytest.raises(ResumeMismatchError, match=re.escape('training.precision "(unset)" -> "bf16"')):
        _train(tmp_path, "bf16", out="old", epochs=1)
