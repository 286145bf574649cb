"""``deepsem demo``: train LSTM-DSSM on the Tatoeba English–Chinese pairs that ship with the package.

Each pair (an English sentence and its Chinese translation) is a positive; the other sentences of the
batch are the negatives; one tower, shared by both languages, reads Latin words and Chinese characters.
The model then answers example queries with the nearest sentences of the whole corpus, in either language.
"""

from __future__ import annotations

import lzma
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

from deepsem.config import ModelConfig, TowerConfig, TrainConfig
from deepsem.index import Document, Index
from deepsem.tasks.matching import SemanticModel, TextPairs, evaluate_translation, train

__all__ = ["EXAMPLE_QUERIES", "demo_configs", "load_tatoeba", "run_demo", "split_pairs"]

EXAMPLE_QUERIES = (
    "Where is the train station?",
    "I am very hungry.",
    "It is raining today.",
    "我喜欢看书。",
    "你明天有空吗？",
    "这个多少钱？",
)


def load_tatoeba() -> tuple[list[str], list[str], list[str]]:
    """The shipped Tatoeba pairs: English sentences, Chinese sentences, attributions (CC BY 2.0 FR)."""
    raw = resources.files("deepsem").joinpath("resources/tatoeba_cmn.tsv.xz").read_bytes()
    en, zh, attribution = [], [], []
    for number, line in enumerate(lzma.decompress(raw).decode("utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"tatoeba_cmn.tsv.xz, line {number}: expected 3 fields, got {len(fields)}")
        en.append(fields[0])
        zh.append(fields[1])
        attribution.append(fields[2])
    return en, zh, attribution


def split_pairs(en: list[str], zh: list[str], dev_size: int = 1000, seed: int = 0) -> tuple[TextPairs, TextPairs]:
    """Hold out ``dev_size`` pairs whose English sentence (and Chinese sentence) never occur in training."""
    rng = np.random.default_rng(seed)
    sentences = sorted(set(en))
    held = set(rng.choice(len(sentences), size=min(dev_size, len(sentences) // 10), replace=False).tolist())
    held_en = {sentences[i] for i in held}
    held_zh = {z for e, z in zip(en, zh, strict=True) if e in held_en}
    dev = [(e, z) for e, z in zip(en, zh, strict=True) if e in held_en]
    tr = [(e, z) for e, z in zip(en, zh, strict=True) if e not in held_en and z not in held_zh]
    return (TextPairs([e for e, _ in tr], [z for _, z in tr]), TextPairs([e for e, _ in dev], [z for _, z in dev]))


def demo_configs(minutes: float | None, epochs: int = 20) -> tuple[ModelConfig, TrainConfig]:
    # the LSTM-DSSM paper's tower (one direction, last state), with which the demo numbers were measured
    tower = TowerConfig(encoder="lstm-peephole", embedding_dim=128, hidden_size=256, output_dim=128, pooling="last",
                        bidirectional=False, dropout=0.0, embedding_dropout=0.0)
    model = ModelConfig(tower=tower, shared_towers=True, gamma=20.0, learn_gamma=True)
    training = TrainConfig(loss="softmax", negatives="in-batch", epochs=epochs, batch_size=256, lr=3e-3,
                           warmup=0.02, patience=3, max_minutes=minutes, time_schedule=True,
                           checkpoint_every=10_000)
    return model, training


def run_demo(out: str | Path | None = None, minutes: float | None = 1.8, queries: tuple[str, ...] = EXAMPLE_QUERIES,
             k: int = 5, progress: bool | None = None, epochs: int = 20
             ) -> tuple[SemanticModel, Path, dict[str, float]]:
    """Train, report the dev score, index every sentence, answer example queries.

    Returns the model, the index directory and the held-out scores (``en2zh_*`` and ``zh2en_*``)."""
    t0 = time.perf_counter()
    en, zh, _ = load_tatoeba()
    train_pairs, dev_pairs = split_pairs(en, zh)
    print(f"Tatoeba English–Chinese: {len(train_pairs.text_a):,} training pairs, {len(dev_pairs.text_a):,} held out")
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="deepsem-demo-"))
    model_cfg, train_cfg = demo_configs(minutes, epochs)
    model, result = train(train_pairs, out_dir / "model", dev_pairs, tokenizer="char",
                          tokenizer_options={"min_count": 2}, model=model_cfg, training=train_cfg,
                          resume=False, progress=progress)
    en2zh = evaluate_translation(model, dev_pairs)
    zh2en = evaluate_translation(model, TextPairs(dev_pairs.text_b, dev_pairs.text_a))
    print(f"trained {result.epochs_run:.1f} epochs in {result.seconds:.0f} s; held-out pairs, "
          f"each searched among the {len(set(dev_pairs.text_b))} held-out translations:")
    print(f"  English -> Chinese: top-1 {en2zh['recall@1']:.3f}, MRR@10 {en2zh['mrr@10']:.3f}")
    print(f"  Chinese -> English: top-1 {zh2en['recall@1']:.3f}, MRR@10 {zh2en['mrr@10']:.3f}")
    corpus = list(dict.fromkeys(en + zh))
    zh_set = set(zh)
    docs = [Document(str(i), t, {"lang": "zh" if t in zh_set else "en"}) for i, t in enumerate(corpus)]
    index = Index.build(model, docs, out_dir / "index", "Flat")
    print(f"index: {len(index):,} unique sentences of both languages -> {out_dir / 'index'}")
    for query, hits in zip(queries, index.search(list(queries), k=k), strict=True):
        print(f"\n> {query}")
        for h in hits:
            print(f"  {h.score:.3f}  {h.text}")
    print(f"\nmodel directory: {out_dir / 'model'}   ({time.perf_counter() - t0:.0f} s in all)")
    scores = {**{f"en2zh_{key}": v for key, v in en2zh.items()}, **{f"zh2en_{key}": v for key, v in zh2en.items()}}
    return model, out_dir / "index", scores
