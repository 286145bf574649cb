"""Training from a bare corpus: ``deepsem.train(corpus=...)`` (ICT + SimCSE pairs) and the dropout SimCSE needs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

import deepsem
from deepsem.config import ModelConfig, TrainConfig
from deepsem.data.batches import PairCollate, PairSet, TextTable
from deepsem.data.corpus_pairs import CorpusDocument, corpus_pairs, ict_pairs
from deepsem.data.errors import DataError
from deepsem.errors import ResumeMismatchError
from deepsem.losses import MatchingLoss
from deepsem.models import TwoTowerModel
from deepsem.tasks.matching import evaluate_translation
from deepsem.text import build_tokenizer

#: A shared vocabulary of 300 made-up words (letters only, so the trigram tokenizer reads them whole).
WORDS = sorted({"".join(random.Random(i).choices("bcdfghklmnprstvz", k=3)) + v
                for i, v in enumerate("aeiou" * 60)})


def _document(rng: random.Random) -> CorpusDocument:
    """A document of 4-6 sentences, each drawn from the document's own 6 words of a shared vocabulary: its
    sentences resemble each other and not other documents' (a held-out document's words are all known)."""
    own = rng.sample(WORDS, 6)
    return CorpusDocument(" ".join(" ".join(rng.choice(own) for _ in range(rng.randint(4, 7))) + "."
                                   for _ in range(rng.randint(4, 6))))


DSSM = {"tower": {"encoder": "dssm", "hidden_size": 64, "output_dim": 32}}


def _write(path: Path, docs: list[CorpusDocument]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": d.text}, ensure_ascii=False) + "\n"
                            for i, d in enumerate(docs)), encoding="utf-8")
    return path


def _mrr_at_10_chance(n: int) -> float:
    """MRR@10 of a random order of ``n`` documents, one relevant."""
    return sum(1.0 / r for r in range(1, min(10, n) + 1)) / n


@pytest.mark.parametrize("encoder", ["lstm-peephole", "dssm"])
def test_simcse_pairs_two_encodings_differ_by_dropout_only(encoder: str):
    """A text paired with itself: the loss encodes its query and its document in separate calls, so in training
    mode dropout draws two masks (two different vectors, the SimCSE positive), in eval mode the two are equal."""
    texts = ["the cell divides", "a protein binds", "genes are expressed", "the cell divides"]
    tok = build_tokenizer("trigram" if encoder == "dssm" else "char", texts)
    tower = {**TINY_MODEL["tower"], "encoder": encoder, "dropout": 0.3, "embedding_dropout": 0.1}
    net = TwoTowerModel(ModelConfig.from_dict({"tower": {**tower, "vocab_size": tok.vocab_size}}, "model"))
    table = TextTable(tok)
    pairs = PairSet.from_texts(table, texts, texts, np.ones(len(texts), np.float32))
    batch = PairCollate(table, pairs, np.random.default_rng(0), 0)(np.arange(len(texts)))
    loss = MatchingLoss(net, TrainConfig(loss="softmax"))
    seen: list[torch.Tensor] = []
    encode = net.encode

    def recording(ids: torch.Tensor, lengths: torch.Tensor, side: str = "query") -> torch.Tensor:
        out = encode(ids, lengths, side)
        seen.append(out.detach().clone())
        return out

    net.encode = recording  # type: ignore[method-assign]
    torch.manual_seed(0)
    loss.train()
    loss(batch).backward()  # the training forward: queries, then documents
    q, d = seen
    assert torch.equal(batch["q_ids"], batch["d_ids"])  # the same texts on both sides
    assert (q - d).abs().amax(-1).min() > 1e-4  # every row: two different vectors
    seen.clear()
    loss.eval()
    with torch.no_grad():
        loss(batch)
    q, d = seen
    torch.testing.assert_close(q, d, rtol=0, atol=0)


def test_corpus_only_training_retrieves_held_out_documents(tmp_path: Path):
    rng = random.Random(3)
    corpus = _write(tmp_path / "docs.jsonl", [_document(rng) for _ in range(150)])
    model, _ = deepsem.train(corpus=corpus, out=tmp_path / "m", tokenizer="trigram", model=DSSM, ict_pairs_per_doc=2,
                             simcse_share=0.25, training={"loss": "softmax", "epochs": 4, "batch_size": 32, "lr": 1e-2,
                                                          "seed": 1})
    info = model.info["corpus"]
    assert info["documents"] == 150 and info["dev_documents"] == 4  # 3% held out
    assert info["ict_pairs"] == 2 * 146 and info["simcse_pairs"] == 98  # a quarter: 98 / (98 + 292)
    assert model.info["train_pairs"] == info["ict_pairs"] + info["simcse_pairs"]
    assert "mrr@10" in model.info["dev_metrics"]
    # documents never seen in training (another draw of the generator): each one's ICT pair, searched among all
    unseen = ict_pairs([_document(random.Random(1000 + i)) for i in range(100)], 1, np.random.default_rng(0))
    mrr = evaluate_translation(deepsem.load(tmp_path / "m"), unseen)["mrr@10"]
    assert mrr > 0.5 > 10 * _mrr_at_10_chance(100)  # chance: 0.029


def test_corpus_pairs_join_given_pairs_and_resume_checks_the_options(tmp_path: Path, pair_files):
    rng = random.Random(4)
    corpus = _write(tmp_path / "docs.jsonl", [_document(rng) for _ in range(40)])
    training = {"loss": "pointwise+softmax", "max_steps": 2, "batch_size": 32, "seed": 2}
    model, _ = deepsem.train(pair_files[0], tmp_path / "m", pair_files[1], model=TINY_MODEL, corpus=corpus,
                             ict_pairs_per_doc=1, training=training)
    info = model.info["corpus"]
    assert info["dev_documents"] == 0  # a dev file is given: nothing held out
    assert model.info["train_pairs"] == 1200 + info["ict_pairs"] == 1240
    assert "accuracy" in model.info["dev_metrics"]  # the labelled dev file chose the model
    drawn = corpus_pairs([CorpusDocument(json.loads(line)["text"]) for line in corpus.read_text("utf-8").splitlines()],
                         ict_pairs_per_doc=1, seed=2)
    assert drawn.ict == info["ict_pairs"]  # the pairs come from training.seed, as documented
    with pytest.raises(ResumeMismatchError):  # other corpus options in the same out: refused, not mixed
        deepsem.train(pair_files[0], tmp_path / "m", pair_files[1], model=TINY_MODEL, corpus=corpus,
                      ict_pairs_per_doc=1, simcse_share=0.5, training=training)


def test_corpus_errors(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        deepsem.train(corpus=empty, out=tmp_path / "m")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "一句。两句。"}\n{"title": "没有正文"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'text'"):
        deepsem.train(corpus=bad, out=tmp_path / "m")
    with pytest.raises(TypeError, match="missing required argument: 'data'"):
        deepsem.train(out=tmp_path / "m")
    with pytest.raises(ValueError, match="simcse_share"):
        deepsem.train(corpus=bad, out=tmp_path / "m", simcse_share=1.0)
    with pytest.raises(ValueError, match="streamed shards"):
        deepsem.train(tmp_path, tmp_path / "m", corpus=bad)
