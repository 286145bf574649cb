"""Recommendation: reading logs, leak-free splits, the towers, the loss, metrics against a worked example and
deepsem's trec_eval-checked ranking metrics, Item2Vec, the model directory, the CLI and POST /recommend."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Killed, killed_at_step
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.config import RecommenderConfig
from deepsem.data.errors import DataError
from deepsem.data.interactions import (
    Interactions,
    ItemFeatures,
    load_movielens,
    read_interactions,
    read_items,
    read_user_features,
    split_sequences,
)
from deepsem.evaluation.recommendation import evaluate_ranking_over_items, popularity_scores, target_ranks
from deepsem.item2vec import train_item2vec
from deepsem.losses import candidate_softmax_loss
from deepsem.metrics import ndcg, recall, recommendation_metrics
from deepsem.models.recommender import TwoTowerRecommender
from deepsem.serve import Limits, create_app
from deepsem.tasks.recommendation import Recommender, evaluate_recommender, train_recommender, training_windows

runner = CliRunner()
N_ITEMS = 30
TINY = {"embedding_dim": 16, "hidden_size": 32, "output_dim": 16, "dropout": 0.0, "max_history": 8}
TRAINING = {"epochs": 12, "batch_size": 16, "lr": 1e-2, "patience": 12, "checkpoint_every": 1000}


def cyclic_rows(n_users: int = 60, length: int = 10, seed: int = 0, random_last: bool = False
                ) -> list[tuple[str, str, float, float]]:
    """Each user walks the items i, i+1, i+2, ... (mod N_ITEMS) from a random start, one per day. With
    ``random_last`` the last item is drawn at random instead: nothing before it can predict it."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for t in range(length):
            item = (start + t) % N_ITEMS
            if random_last and t == length - 1:
                item = int(rng.integers(N_ITEMS))
            rows.append((f"u{u}", f"i{item}", 1_600_000_000 + 86400 * t, 4.0))
    return rows


@pytest.fixture(scope="module")
def cyclic() -> Interactions:
    data = Interactions.from_rows(cyclic_rows())
    data.item_features = ItemFeatures({f"i{i}": f"film number {i} part {i % 3}" for i in range(N_ITEMS)},
                                      {f"i{i}": [f"genre{i % 4}"] for i in range(N_ITEMS)})
    data.user_features = {f"u{u}": [f"gender={'FM'[u % 2]}"] for u in range(60)}
    return data


@pytest.fixture(scope="module")
def trained(cyclic: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    out = tmp_path_factory.mktemp("rec") / "model"
    rec, result = train_recommender(cyclic, out, config={**TINY, "encoder": "lstm-peephole"}, training=TRAINING,
                                    progress=False)
    assert result.best_metric is not None
    return rec


# -- reading logs -------------------------------------------------------------------------------------------------
def test_read_interactions_orders_by_time_keeps_file_order_on_ties_and_drops_repeats(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts,stars\n"
                    "a,x,30,5\n"   # out of order in the file
                    "a,y,10,4\n"
                    "b,z,2021-01-02T00:00:00,\n"   # ISO date, no rating
                    "a,w,20,3\n"
                    "a,v,20,3\n"   # same time as w: keeps the file order w, v
                    "a,y,10,4\n",  # an exact repeat
                    encoding="utf-8")
    data = read_interactions(path, user_col="user", item_col="item", time_col="ts", rating_col="stars")
    seqs = data.sequences()
    assert [data.items[i] for i in seqs[data.users.index("a")]] == ["y", "w", "v", "x"]
    assert data.duplicates == 1 and len(data) == 5
    assert math.isnan(data.rating[data.user == data.users.index("b")][0])
    assert data.filter(min_rating=4).sequences()[data.users.index("a")].tolist() == [
        data.items.index("y"), data.items.index("x")]


@pytest.mark.parametrize("body, line, field, problem", [
    ("a\tx\t10\nb\ty\tsoon\n", 2, "time", "neither a number nor an ISO-8601 date"),
    ("a\tx\t10\n\t\ty\t5\n", 2, "user", "empty id"),
    ("a\tx\t10\nb\n", 2, "item", None),
])
def test_bad_rows_name_file_line_and_field(tmp_path: Path, body: str, line: int, field: str,
                                           problem: str | None) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_interactions(path)
    assert (err.value.line, err.value.field) == (line, field) and "log.tsv" in str(err.value)
    if problem:
        assert problem in str(err.value)
    skipped = read_interactions(path, skip_bad_rows=True)
    assert skipped.skipped.count == 1 and len(skipped) == 1


def test_item_and_user_feature_files_and_their_bad_rows(tmp_path: Path) -> None:
    items = tmp_path / "items.tsv"
    items.write_text("i1\tFilm one\tDrama|War\ni2\t\t\n", encoding="utf-8")
    features = read_items(items)
    assert features.titles == {"i1": "Film one", "i2": ""} and features.categories["i1"] == ["Drama", "War"]
    items.write_text("i1\tFilm one\tDrama\n\tno id\tWar\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"items.tsv, line 2, field 'item': empty id"):
        read_items(items)
    users = tmp_path / "users.csv"
    users.write_text("user,gender,age\nu1,F,30\nu2,,40\n", encoding="utf-8")
    assert read_user_features(users, user_col="user", feature_cols=("gender", "age")) == {
        "u1": ["gender=F", "age=30"], "u2": ["age=40"]}
    users.write_text("user,gender\n,F\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"users.csv, line 2, field 'user'"):
        read_user_features(users, user_col="user", feature_cols=("gender",))


def test_parquet_logs_read_like_csv(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = cyclic_rows(5, 4)
    pq.write_table(pa.table({"u": [r[0] for r in rows], "i": [r[1] for r in rows], "t": [r[2] for r in rows]}),
                   tmp_path / "log.parquet")
    data = read_interactions(tmp_path / "log.parquet", user_col="u", item_col="i", time_col="t")
    reference = Interactions.from_rows(rows)
    assert [[data.items[i] for i in s] for s in data.sequences()] == [
        [reference.items[i] for i in s] for s in reference.sequences()]


def test_movielens_100k_1m_and_latest_layouts(tmp_path: Path) -> None:
    ml100 = tmp_path / "ml-100k"
    ml100.mkdir()
    (ml100 / "u.data").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n")
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    (ml100 / "u.item").write_bytes(("|".join(["10", "Café Society (1995)", "01-Jan-1995", "", "url", *flags])
                                    + "\n" + "|".join(["20", "Heat (1995)", "", "", "", *["0"] * 19]) + "\n"
                                    ).encode("latin-1"))
    (ml100 / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    data = load_movielens(ml100)
    assert len(data) == 3 and data.item_features.titles["10"] == "Café Society (1995)"
    assert data.item_features.categories["10"] == ["Comedy", "decade=1990s"]
    assert data.user_features["2"] == ["age=50-55", "gender=F", "occupation=other"]

    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n1::bad\n")
    (ml1m / "movies.dat").write_bytes("1193::One Flew (1975)::Drama\n661::James (1996)::Animation|Children's\n"
                                      .encode("latin-1"))
    with pytest.raises(DataError, match=r"ratings.dat, line 3"):
        load_movielens(ml1m)
    data = load_movielens(ml1m, skip_bad_rows=True)
    assert len(data) == 2 and data.skipped.count == 1
    assert data.item_features.categories["661"] == ["Animation", "Children's", "decade=1990s"]

    latest = tmp_path / "ml-latest-small"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    (latest / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n'
                                       "3,Grumpier Old Men (1995),(no genres listed)\n")
    data = load_movielens(latest)
    assert [data.items[i] for i in data.sequences()[0]] == ["3", "1"]  # by time, not by file order
    assert data.item_features.categories["3"] == ["decade=1990s"]
    with pytest.raises(FileNotFoundError, match="not a MovieLens folder"):
        load_movielens(tmp_path)


# -- splits: no leakage ---------------------------------------------------------------------------------------------
def test_leave_last_out_histories_hold_only_the_past(cyclic: Interactions) -> None:
    for n_test, n_valid in ((1, 1), (3, 2)):
        split = split_sequences(cyclic, n_test=n_test, n_valid=n_valid)
        full = cyclic.sequences()
        for stage, times in (("valid", split.valid_time), ("test", split.test_time)):
            users, histories, targets = split.examples(stage)
            assert len(users) == 60
            for u, hist, tgt in zip(users, histories, targets, strict=True):
                assert len(tgt) == (n_test if stage == "test" else n_valid)
                # the history is exactly the sequence before the targets: nothing at or after them
                assert np.array_equal(np.concatenate([hist, tgt]), full[u][: len(hist) + len(tgt)])
                history_times = np.concatenate([split.train_time[u]] + ([split.valid_time[u]] if stage == "test"
                                                                         else []))
                assert history_times.max() <= times[u].min()
        assert all(len(s) == 10 - n_test - n_valid for s in split.train)
    short = split_sequences(Interactions.from_rows([("a", "x", 1, 1), ("a", "y", 2, 1)]), 1, 1)
    assert short.examples("test")[0] == [] and len(short.train[0]) == 2  # too short: training only


def test_training_windows_cover_each_training_target_once_and_never_a_held_out_item() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, size=n) for n in (1, 2, 7, 30, 61)]
    windows = training_windows(seqs, max_history=8)
    covered: dict[int, list[int]] = {}
    for u, start, end, first in windows:
        assert end - start <= 9 and start <= first - 1 < end
        covered.setdefault(int(u), []).extend(range(int(first), int(end)))
    for u, seq in enumerate(seqs):
        assert sorted(covered.get(u, [])) == list(range(1, len(seq)))  # every target position once
        if len(seq) > 9:
            later = [(s, f) for uu, s, e, f in windows if uu == u and f > 1]
            assert all(f - s >= 4 for s, f in later)  # at least max_history // 2 items of history


def test_user_vector_at_a_step_ignores_everything_after_it() -> None:
    torch.manual_seed(0)
    for encoder in ("lstm-peephole", "gru", "rnn", "lstm-coupled"):
        net = TwoTowerRecommender(RecommenderConfig(n_items=20, encoder=encoder, **TINY)).eval()
        hist = torch.tensor([[3, 5, 7, 9, 11, 2]])
        changed = torch.tensor([[3, 5, 7, 19, 1, 4]])
        a = net.user_steps(hist, torch.tensor([6]))
        b = net.user_steps(changed, torch.tensor([6]))
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3:], b[:, 3:])
        alone = net.user_vectors(torch.tensor([[3, 5, 7, 0, 0]]), torch.tensor([3]))  # the user tower alone
        assert torch.allclose(alone, a[:, 2], atol=1e-6)


def test_held_out_targets_cannot_be_read_off_the_history(tmp_path: Path) -> None:
    """The canary: training sequences follow i -> i+1; the last item of every user is random. A model that saw
    the target (through the split, the windows or the user tower) would score HR@10 near 1 on it; one that does
    not is at chance (10/29), while on the predictable control it is near 1 — so the test can fail both ways."""
    hr = {}
    for random_last in (False, True):
        data = Interactions.from_rows(cyclic_rows(random_last=random_last, seed=1))
        split = split_sequences(data, n_test=1, n_valid=1)
        rec, _ = train_recommender(split, tmp_path / str(random_last), config=TINY, training=TRAINING,
                                   progress=False)
        hr[random_last] = evaluate_recommender(rec, split, "test")["hr@10"]
    assert hr[False] > 0.9
    assert hr[True] < 0.6


# -- loss and metrics ----------------------------------------------------------------------------------------------
def test_candidate_softmax_loss_and_logq_correction_by_hand() -> None:
    users = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    cands = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    target = torch.tensor([0, 1])
    q = torch.tensor([0.5, 0.3, 0.2])
    gamma = 5.0
    expected = 0.0
    for u, t in zip(users, target, strict=True):
        logits = [gamma * float(u @ c) - math.log(float(qq)) for c, qq in zip(cands, q, strict=True)]
        expected += -(logits[t] - math.log(sum(math.exp(z) for z in logits)))
    got = candidate_softmax_loss(users, cands, target, gamma, q.log())
    assert math.isclose(float(got), expected / 2, rel_tol=1e-6)
    # a uniform sampling distribution changes nothing
    plain = candidate_softmax_loss(users, cands, target, gamma)
    uniform = candidate_softmax_loss(users, cands, target, gamma, torch.full((3,), math.log(1 / 3)))
    assert math.isclose(float(plain), float(uniform), rel_tol=1e-6)


def test_recommendation_metrics_worked_example_and_trec_eval_definitions() -> None:
    # user 0: one target at rank 3; user 1: targets at ranks 1 and 12; user 2: one target at rank 60
    ranks = [np.array([3]), np.array([1, 12]), np.array([60])]
    m = recommendation_metrics(ranks, ks=(10, 50))
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    ideal2 = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 / ideal2 + 0) / 3)
    assert m["recall@50"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 60) / 3)
    # the same numbers from deepsem.metrics' per-query functions (checked against pytrec_eval there)
    for k in (10, 50):
        want_ndcg, want_recall = [], []
        for r in ranks:
            ranking = [f"d{j}" for j in range(1, 101)]
            rels = {f"d{int(x)}": 1 for x in r}
            want_ndcg.append(ndcg(ranking, rels, k))
            want_recall.append(recall(ranking, rels, k))
        assert m[f"ndcg@{k}"] == pytest.approx(np.mean(want_ndcg))
        assert m[f"recall@{k}"] == pytest.approx(np.mean(want_recall))
    top = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 1]])
    assert recommendation_metrics(ranks, (2, 3), top, n_items=10)["coverage@2"] == pytest.approx(3 / 10)
    with pytest.raises(ValueError):
        recommendation_metrics([np.array([0])])


def test_target_ranks_exclude_the_history_and_break_ties_by_position() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.8, 0.1]])
    ranks, order = target_ranks(scores, [np.array([0])], [np.array([2])])
    assert ranks[0].tolist() == [3]  # item 0 is seen; 3 beats it; 1 ties it with a smaller position
    assert order[0, :4].tolist() == [3, 1, 2, 4]
    ranks, _ = target_ranks(scores, [np.array([0])], [np.array([2])], exclude_seen=False)
    assert ranks[0].tolist() == [4]


def test_popularity_baseline_by_hand(cyclic: Interactions) -> None:
    split = split_sequences(cyclic)
    counts = split.train_counts()
    assert counts.sum() == sum(len(s) for s in split.train)
    m = evaluate_ranking_over_items(popularity_scores(split), split, "test", (10,))
    users, hists, tgts = split.examples("test")
    hits = 0
    for h, t in zip(hists, tgts, strict=True):
        order = [i for i in sorted(range(split.n_items), key=lambda i: (-counts[i], i)) if i not in set(h)]
        hits += t[0] in order[:10]
    assert m["hr@10"] == pytest.approx(hits / len(users))


# -- the trained model ---------------------------------------------------------------------------------------------
def test_trained_model_learns_the_walk_and_beats_popularity(trained: Recommender, cyclic: Interactions) -> None:
    split = split_sequences(cyclic)
    ours = evaluate_recommender(trained, split, "test", user_features=cyclic.user_features)
    pop = evaluate_ranking_over_items(popularity_scores(split), split, "test")
    assert ours["hr@10"] > 0.9 and ours["ndcg@10"] > pop["ndcg@10"] + 0.3
    top = trained.recommend(["i3", "i4", "i5"], k=3)
    assert top[0][0] == "i6"


def test_recommend_excludes_seen_handles_unknown_and_empty(trained: Recommender) -> None:
    answer = trained.recommend_many([["i1", "nope", "i2"]], k=N_ITEMS)[0]
    ids = [i for i, _ in answer.items]
    assert answer.unknown == ["nope"] and not answer.fallback
    assert "i1" not in ids and "i2" not in ids and len(ids) == N_ITEMS - 2
    scores = [s for _, s in answer.items]
    assert scores == sorted(scores, reverse=True)
    with_seen = trained.recommend(["i1", "i2"], k=N_ITEMS, exclude_seen=False)
    assert {i for i, _ in with_seen} == {f"i{i}" for i in range(N_ITEMS)}
    for history in ([], ["unknown-1"]):
        fallback = trained.recommend_many([history], k=5)[0]
        popular = np.argsort(-np.asarray(trained.catalogue.counts), kind="stable")[:5]
        assert fallback.fallback and [i for i, _ in fallback.items] == [trained.catalogue.ids[j] for j in popular]
    with pytest.raises(ValueError, match="k must be"):
        trained.recommend(["i1"], k=0)


def test_inference_leaves_a_training_model_in_training_mode(trained: Recommender) -> None:
    """Saving the best model mid-run computes item vectors: that must not switch dropout off for the rest."""
    trained.model.train()
    try:
        trained._item_vectors = None
        vectors = trained.item_vectors()
        trained.user_vectors([["i1"]])
        assert trained.model.training
        trained.model.eval()
        np.testing.assert_allclose(trained.model.item_vectors().detach().numpy(), vectors, atol=1e-6)
    finally:
        trained.model.eval()


def test_faiss_answers_equal_a_brute_force_scan(trained: Recommender) -> None:
    histories = [["i1", "i2", "i3"], ["i20", "i7"], ["i29"]]
    vectors = trained.user_vectors(histories)
    items = trained.item_vectors()
    for history, u in zip(histories, vectors, strict=True):
        scores = items @ u
        seen = {trained.catalogue.index[i] for i in history}
        want = [trained.catalogue.ids[j] for j in np.argsort(-scores) if j not in seen][:5]
        got = [i for i, _ in trained.recommend(history, k=5)]
        assert got == want


def test_model_directory_round_trip(trained: Recommender, tmp_path: Path) -> None:
    saved = trained.save(tmp_path / "m")
    assert {p.name for p in saved.iterdir()} >= {"config.json", "model.safetensors", "items.json", "items.faiss",
                                                 "tokenizer.json"}
    loaded = deepsem.load(saved)
    assert isinstance(loaded, Recommender)
    for history in (["i4", "i5"], ["i10"], []):
        got, want = loaded.recommend(history, k=5), trained.recommend(history, k=5)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    items_json = (saved / "items.json").read_text()
    (saved / "items.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"items\.json: not valid JSON"):
        deepsem.load(saved)
    (saved / "items.json").write_text(json.dumps({**json.loads(items_json), "counts": [1]}))
    with pytest.raises(ValueError, match="field 'counts' has 1 entries"):
        deepsem.load(saved)
    (saved / "items.json").write_text(items_json)
    config = json.loads((saved / "config.json").read_text())
    config["recommender"]["n_items"] = 99
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError):
        deepsem.load(saved)


@pytest.mark.parametrize("title_encoder", ["dssm", "gru"])
def test_text_towers_read_the_titles(cyclic: Interactions, tmp_path: Path, title_encoder: str) -> None:
    rec, _ = train_recommender(cyclic, tmp_path / "m", config={**TINY, "title_encoder": title_encoder},
                               training={**TRAINING, "epochs": 6}, progress=False)
    tower = rec.model.item_tower.title_tower
    assert tower is not None and type(tower).__name__ == ("DSSMTower" if title_encoder == "dssm" else
                                                          "RecurrentTower")
    assert rec.title_tokenizer is not None and rec.title_tokenizer.name == ("trigram" if title_encoder == "dssm"
                                                                              else "word")
    # the title changes the item's input: zeroing it changes the vector
    x = rec.model.item_tower.inputs(torch.tensor([3]))
    saved_title = rec.model.item_tower.title.clone()
    rec.model.item_tower.title.zero_()
    assert not torch.allclose(x, rec.model.item_tower.inputs(torch.tensor([3])))
    rec.model.item_tower.title.copy_(saved_title)
    loaded = deepsem.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.item_vectors(), rec.item_vectors(), atol=1e-5)


def test_a_killed_run_resumes_from_its_checkpoint(cyclic: Interactions, tmp_path: Path) -> None:
    config = {**TINY, "encoder": "gru", "title_encoder": "none"}
    training = {**TRAINING, "epochs": 4, "checkpoint_every": 5}
    full, _ = train_recommender(cyclic, tmp_path / "full", config=config, training=training, progress=False)

    with pytest.raises(Killed), killed_at_step(7):  # after the checkpoint at step 5
        train_recommender(cyclic, tmp_path / "cut", config=config, training=training, progress=False)
    state = json.loads((tmp_path / "cut" / "training" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    resumed, result = train_recommender(cyclic, tmp_path / "cut", config=config, training=training, progress=False)
    assert result.steps == 4 * math.ceil(len(training_windows(split_sequences(cyclic).train, 8)) / 16)
    np.testing.assert_allclose(resumed.item_vectors(), full.item_vectors(), atol=1e-5)


@pytest.mark.parametrize("negatives", ["in-batch", "sampled"])
def test_sampled_negatives_with_logq_learn_too(cyclic: Interactions, tmp_path: Path, negatives: str) -> None:
    rec, _ = train_recommender(cyclic, tmp_path / negatives, config={**TINY, "title_encoder": "none"},
                               training=TRAINING, negatives=negatives, num_negatives=8, progress=False)
    assert evaluate_recommender(rec, split_sequences(cyclic), "test")["hr@10"] > 0.8


def test_item2vec_neighbours_follow_the_walk_and_initialise_the_model(cyclic: Interactions) -> None:
    split = split_sequences(cyclic)
    vectors = train_item2vec([s.tolist() for s in split.train], dim=16, window=2, epochs=30, workers=1)
    unit, found = vectors.aligned([str(i) for i in range(split.n_items)])
    assert found.all()
    first = split.items.index("i10")
    neighbours = {split.items[j] for j in np.argsort(-(unit @ unit[first]))[1:3]}
    assert neighbours == {"i9", "i11"}
    m = evaluate_ranking_over_items(vectors.scorer(split, last_n=3), split, "test", (10,))
    pop = evaluate_ranking_over_items(popularity_scores(split), split, "test", (10,))
    assert m["hr@10"] > 0.9 > pop["hr@10"]
    weight = torch.randn(split.n_items + 1, 16) * 0.3
    before = weight[1:].norm(dim=1).mean()
    assert vectors.copy_into(weight, [str(i) for i in range(split.n_items)]) == split.n_items
    assert torch.allclose(weight[1:].norm(dim=1).mean(), before, rtol=1e-4)
    assert torch.allclose(torch.nn.functional.normalize(weight[first + 1], dim=0), torch.from_numpy(unit[first]),
                          atol=1e-5)


# -- CLI and service -----------------------------------------------------------------------------------------------
def write_log(path: Path, rows: list[tuple[str, str, float, float]]) -> Path:
    path.write_text("user\titem\ttime\trating\n" + "".join(f"{u}\t{i}\t{t}\t{r}\n" for u, i, t, r in rows),
                    encoding="utf-8")
    return path


def test_cli_train_evaluate_predict_item2vec(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.tsv", cyclic_rows())
    items = tmp_path / "items.tsv"
    items.write_text("".join(f"i{i}\tfilm {i}\tgenre{i % 4}\n" for i in range(N_ITEMS)), encoding="utf-8")
    out = tmp_path / "model"
    result = runner.invoke(app, ["recommend", "train", str(log), "--out", str(out), "--columns", "user,item,time",
                                 "--items", str(items), "--embedding-dim", "16", "--hidden", "32", "--dim", "16",
                                 "--max-history", "8", "--epochs", "12", "--batch-size", "16", "--lr", "0.01",
                                 "--title-encoder", "dssm",
                                 "--dropout", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "best validation" in result.output
    result = runner.invoke(app, ["recommend", "evaluate", "--model", str(out), str(log), "--columns",
                                 "user,item,time", "--baselines", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["deepsem"]["hr@10"] > 0.8 > metrics["most-popular"]["hr@10"]
    assert set(metrics) == {"deepsem", "most-popular", "item2vec"}
    result = runner.invoke(app, ["recommend", "predict", "--model", str(out), "-k", "2", "i7", "i8", "zzz"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split("\t")[0] == "i9" and "zzz" in result.output
    result = runner.invoke(app, ["recommend", "item2vec", str(log), "--out", str(tmp_path / "items.vec"),
                                 "--columns", "user,item,time", "--dim", "8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "items.vec").read_text().splitlines()[0] == f"{N_ITEMS} 8"


def test_cli_bad_log_names_file_line_and_field(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("u1\ti1\t10\nu1\ti2\tyesterday\n", encoding="utf-8")
    result = runner.invoke(app, ["recommend", "train", str(log), "--out", str(tmp_path / "m"), "--no-progress"])
    assert result.exit_code == 2
    assert "log.tsv, line 2, field 'time'" in result.output
    result = runner.invoke(app, ["recommend", "predict", "--model", str(tmp_path / "nowhere"), "x"])
    assert result.exit_code == 2 and "not a deepsem model directory" in result.output


def test_service_recommend(trained: Recommender, tmp_path: Path, served_app) -> None:
    with TestClient(create_app(recommender=trained, limits=Limits(max_k=10))) as client:
        r = client.post("/recommend", json={"history": ["i3", "i4", 5], "k": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["id"] for x in body["items"]] == [i for i, _ in trained.recommend(["i3", "i4", "5"], k=4)]
        assert body["unknown"] == ["5"] and body["fallback"] is False
        assert body["items"][0]["title"] == trained.catalogue.titles[trained.catalogue.index[body["items"][0]["id"]]]
        r = client.post("/recommend", json={"history": [], "k": 3})
        assert r.status_code == 200 and r.json()["fallback"] is True and len(r.json()["items"]) == 3
        r = client.post("/recommend", json={"history": ["i3"], "k": 30, "exclude_seen": False})
        assert r.status_code == 422 and "k must be between 1 and 10" in r.text
        r = client.post("/recommend", json={"history": ["i3"], "k": 10, "exclude_seen": False})
        assert r.status_code == 200 and len(r.json()["items"]) == 10
        r = client.post("/recommend", json={"history": "i3"})
        assert r.status_code == 422
        assert client.post("/classify", json={"texts": ["a"]}).status_code == 404

    saved = trained.save(tmp_path / "served")
    for argv in (["recommend", "serve", "--model", str(saved)], ["serve", "--model", str(saved)]):
        result, served = served_app(argv)
        assert result.exit_code == 0, result.output
        with TestClient(served) as client:
            r = client.post("/recommend", json={"history": ["i10", "i11"], "k": 1})
            assert r.status_code == 200 and r.json()["items"][0]["id"] == trained.recommend(["i10", "i11"], k=1)[0][0]


def test_a_run_with_other_settings_is_not_resumed(cyclic: Interactions, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from deepsem.errors import ResumeMismatchError
    from deepsem.trainer import Trainer

    monkeypatch.setattr(Trainer, "plot", lambda self: None)  # a second per run; not under test

    config = {**TINY, "encoder": "gru", "title_encoder": "none"}
    training = {**TRAINING, "epochs": 1}
    train_recommender(cyclic, tmp_path / "m", config=config, training=training, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"model\.hidden_size 32 -> 16.*--no-resume"):
        train_recommender(cyclic, tmp_path / "m", config={**config, "hidden_size": 16}, training=training,
                          progress=False)
    with pytest.raises(ResumeMismatchError, match=r"task\.negatives \"full\" -> \"sampled\""):
        train_recommender(cyclic, tmp_path / "m", config=config, training=training, negatives="sampled",
                          progress=False)
    with pytest.raises(ResumeMismatchError, match="training data differs"):
        train_recommender(Interactions.from_rows(cyclic_rows(seed=1)), tmp_path / "m", config=config,
                          training=training, progress=False)
    _, result = train_recommender(cyclic, tmp_path / "m", config={**config, "hidden_size": 16}, training=training,
                                  resume=False, progress=False)
    assert result.steps > 0
