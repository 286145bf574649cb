"""Every tower behind one interface: shapes, padding invariance, each tower against an independent dense
reference of its paper's equations, initialisation, and learning a tiny task through ``deepsem.train``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import deepsem
from deepsem.config import ENCODERS, TowerConfig
from deepsem.text import build_tokenizer
from deepsem.text.trigram import SEPARATOR_ID
from deepsem.towers import CNNTower, DSSMTower, RecurrentTower, build_tower

TEXTS = ["good morning world", "hello there", "中文 测试 一下", "a", "the good the bad the ugly morning"]


def trigram_batch(texts: list[str], tok=None):
    tok = tok or build_tokenizer("trigram", TEXTS)
    ids = [tok.encode(t) for t in texts]
    lengths = torch.tensor([len(x) for x in ids])
    batch = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)] = torch.tensor(x)
    return tok, batch, lengths


def small(encoder: str, vocab_size: int, **kw) -> TowerConfig:
    return TowerConfig(encoder=encoder, vocab_size=vocab_size, embedding_dim=12, hidden_size=10, output_dim=8,
                       **kw)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_shape_and_padding_invariance(encoder: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    tok, batch, lengths = trigram_batch(TEXTS)
    tower = build_tower(small(encoder, tok.vocab_size, bidirectional=bidirectional, pooling="last")).eval()
    out = tower(batch, lengths)
    assert out.shape == (len(TEXTS), 8)
    alone = torch.cat([tower(batch[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(len(TEXTS))])
    torch.testing.assert_close(out, alone, atol=1e-6, rtol=0)
    extra = torch.cat([batch, torch.zeros(len(TEXTS), 7, dtype=torch.long)], 1)  # more padding changes nothing
    torch.testing.assert_close(tower(extra, lengths), out, atol=1e-6, rtol=0)


def counts(tok, words: list[str]) -> torch.Tensor:
    """Dense letter-trigram count vectors, one row per word, built from the trigram strings."""
    from deepsem.text.trigram import letter_trigrams

    x = torch.zeros(len(words), tok.vocab_size)
    for r, word in enumerate(words):
        for tri in letter_trigrams(word):
            tid = tok.token_to_id(tri)
            if tid > SEPARATOR_ID:
                x[r, tid] += 1
    return x


def test_dssm_is_the_dense_mlp_over_trigram_counts() -> None:
    torch.manual_seed(1)
    tok, batch, lengths = trigram_batch(TEXTS)
    tower = DSSMTower(small("dssm", tok.vocab_size, num_layers=2)).eval()
    assert tower.config.num_layers == 2
    for row, text in enumerate(TEXTS):
        x = counts(tok, tok.words(text)).sum(0)  # the text's 30k-wide count vector, built densely here
        h = torch.tanh(tower.word_hashing.weight.T @ x + tower.bias)
        h = torch.tanh(tower.hidden[0].weight @ h + tower.hidden[0].bias)
        y = torch.tanh(tower.proj.weight @ h + tower.proj.bias)
        torch.testing.assert_close(tower(batch[row : row + 1], lengths[row : row + 1])[0], y, atol=1e-5, rtol=0)
    # a bag: word order does not matter
    _, b2, l2 = trigram_batch(["world morning good", "good morning world"], tok)
    out = tower(b2, l2)
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)


def test_cnn_is_the_clsm_convolution_over_word_trigram_windows() -> None:
    torch.manual_seed(2)
    tok, batch, lengths = trigram_batch(TEXTS)
    tower = CNNTower(small("cnn", tok.vocab_size)).eval()
    maps, vocab = 10, tok.vocab_size
    # W_c: (C, 3V), the convolution over the concatenated count vectors of three words
    w_c = torch.cat([tower.conv.weight[:, k * maps : (k + 1) * maps].T for k in range(3)], dim=1)
    for row, text in enumerate(TEXTS):
        x = counts(tok, tok.words(text))
        x = torch.cat([torch.zeros(1, vocab), x, torch.zeros(1, vocab)])  # zero words outside the text
        windows = torch.stack([torch.cat([x[t - 1], x[t], x[t + 1]]) for t in range(1, len(x) - 1)])
        h = torch.tanh(windows @ w_c.T + tower.bias)  # (n words, C)
        y = torch.tanh(tower.proj(h.max(0).values))
        torch.testing.assert_close(tower(batch[row : row + 1], lengths[row : row + 1])[0], y, atol=1e-5, rtol=0)
    # unlike the bag of trigrams, word order matters
    _, b2, l2 = trigram_batch(["world morning good", "good morning world"], tok)
    out = tower(b2, l2)
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("encoder", ["rnn", "gru"])
def test_torch_cells_last_state_matches_torch_module(encoder: str) -> None:
    torch.manual_seed(3)
    tok, batch, lengths = trigram_batch(TEXTS)
    tower = RecurrentTower(small(encoder, tok.vocab_size, pooling="last", bidirectional=False)).eval()
    for row in range(len(TEXTS)):
        x = tower.embedding(batch[row : row + 1, : lengths[row]])
        _, h_n = tower.rnn(x)  # the torch module alone on the unpadded sequence
        torch.testing.assert_close(tower(batch[row : row + 1], lengths[row : row + 1])[0],
                                   torch.tanh(tower.proj(h_n[-1, 0])), atol=1e-6, rtol=0)


@pytest.mark.parametrize("encoder", ["rnn", "gru", "lstm", "lstm-peephole"])
def test_orthogonal_init_has_unit_singular_values(encoder: str) -> None:
    torch.manual_seed(4)
    gates = {"rnn": 1, "gru": 3}.get(encoder, 4)
    for orthogonal in (True, False):
        tower = RecurrentTower(small(encoder, 50, orthogonal_init=orthogonal, num_layers=2))
        for name, w in tower.rnn.named_parameters():
            if name.startswith("weight_hh"):
                blocks = w.detach().reshape(gates, 10, 10)
                s = torch.linalg.svdvals(blocks)
                if orthogonal:
                    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-5, rtol=0)
                else:  # torch's uniform init: far from orthogonal
                    assert (s - 1).abs().max() > 0.3


def test_trigram_towers_need_the_trigram_tokenizer(tmp_path: Path) -> None:
    pairs = deepsem.TextPairs(["银行卡", "还款"], ["银行卡余额", "还款利息"], None)
    with pytest.raises(ValueError, match="tokenizer 'trigram'"):
        deepsem.train(pairs, tmp_path / "m", model={"tower": {"encoder": "cnn"}}, tokenizer="char",
                      progress=False)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_tower_learns_the_tiny_task(encoder: str, pair_files: tuple[Path, Path], tmp_path: Path) -> None:
    tokenizer = "trigram" if encoder in ("dssm", "cnn") else "char"
    model, _ = deepsem.train(
        pair_files[0], tmp_path / "m", pair_files[1], tokenizer=tokenizer,
        model={"tower": {"encoder": encoder, "embedding_dim": 16, "hidden_size": 24, "output_dim": 16,
                         "bidirectional": False}},
        training={"epochs": 3, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 1000}, progress=False)
    assert model.info["dev_metrics"]["accuracy"] > 0.85, model.info["dev_metrics"]
    reloaded = deepsem.load(tmp_path / "m")
    assert reloaded.model.config.tower.encoder == encoder
    a = reloaded.encode(["银行卡账户", "天气下雨"])
    b = model.encode(["银行卡账户", "天气下雨"])
    assert F.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b)).min() > 0.9999
