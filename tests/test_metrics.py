"""Metrics: worked examples by hand, and cross-checks against scikit-learn, scipy and pytrec_eval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepsem.metrics import (
    accuracy,
    average_precision,
    best_threshold,
    confusion_matrix,
    map_at_k,
    mrr_at_k,
    ndcg,
    ndcg_at_k,
    pair_metrics,
    per_query_metrics,
    precision_recall_f1,
    rank_documents,
    rankdata,
    recall,
    recall_at_k,
    reciprocal_rank,
    retrieval_metrics,
    roc_auc,
    spearman,
)

# ============================================================================================
# Pair metrics, by hand

SCORES = [0.1, 0.4, 0.35, 0.8]
LABELS = [0, 0, 1, 1]


def test_best_threshold_worked_example() -> None:
    # sorted: 0.1(0) 0.35(1) 0.4(0) 0.8(1); candidates and accuracy of score >= t:
    #   -0.9 (all positive)     -> 2/4
    #   0.225 = (0.1+0.35)/2    -> 0.1 neg ok, 0.35 ok, 0.4 wrong, 0.8 ok -> 3/4
    #   0.375 = (0.35+0.4)/2    -> 0.1 ok, 0.35 wrong, 0.4 wrong, 0.8 ok  -> 2/4
    #   0.6   = (0.4+0.8)/2     -> 0.1 ok, 0.35 wrong, 0.4 ok, 0.8 ok     -> 3/4
    #   1.8   (all negative)    -> 2/4
    # tie between 0.225 and 0.6 -> the lowest, 0.225
    assert best_threshold(SCORES, LABELS) == pytest.approx(0.225)
    # all positive / all negative data -> a threshold outside the scores
    assert best_threshold([0.2, 0.5], [1, 1]) == pytest.approx(-0.8)
    assert best_threshold([0.2, 0.5], [0, 0]) == pytest.approx(1.5)
    assert best_threshold([3.0, 3.0, 1.0], [1, 1, 0]) == pytest.approx(2.0)


def test_pair_metrics_worked_example() -> None:
    m = pair_metrics(SCORES, LABELS)
    # threshold 0.225 -> predictions [0, 1, 1, 1]: tp=2 fp=1 fn=0
    #   accuracy 3/4; f1 = 2*2 / (2*2 + 1 + 0) = 0.8
    # AUC: positive/negative pairs (0.35,0.1) win, (0.35,0.4) lose, (0.8,0.1) win, (0.8,0.4) win -> 3/4
    # spearman: score ranks [1,3,2,4] - 2.5 = [-1.5,.5,-.5,1.5];
    #   label ranks [1.5,1.5,3.5,3.5] - 2.5 = [-1,-1,1,1]
    #   dot = 1.5 - .5 - .5 + 1.5 = 2; norms sqrt(5) and 2 -> 2 / (2 sqrt 5) = 1/sqrt(5)
    assert m == pytest.approx(
        {"accuracy": 0.75, "f1": 0.8, "roc_auc": 0.75, "spearman": 1 / math.sqrt(5), "threshold": 0.225}
    )
    assert list(m) == ["accuracy", "f1", "roc_auc", "spearman", "threshold"]
    # a given threshold: 0.6 -> predictions [0,0,0,1]: tp=1 fp=0 fn=1 -> acc 3/4, f1 = 2/(2+0+1)
    fixed = pair_metrics(SCORES, LABELS, threshold=0.6)
    assert fixed["threshold"] == 0.6
    assert fixed["accuracy"] == pytest.approx(0.75)
    assert fixed["f1"] == pytest.approx(2 / 3)
    # a score equal to the threshold counts as positive: 0.35 >= 0.35 -> [0,1,1,1]
    assert pair_metrics(SCORES, LABELS, threshold=0.35)["f1"] == pytest.approx(0.8)


def test_auc_and_spearman_with_ties() -> None:
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: (0.5,0.5) tie = 1/2, the other three pairs win -> 3.5/4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    # rankdata of [10, 20, 10, 30]: the two 10s share ranks 1 and 2 -> 1.5
    assert rankdata([10, 20, 10, 30]).tolist() == [1.5, 3.0, 1.5, 4.0]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_pair_metrics_graded_labels_give_spearman_only() -> None:
    scores = [0.9, 0.2, 0.5, 0.7]
    grades = [2, 0, 1, 2]
    # ranks: scores [4,1,2,3]; grades [3.5,1,2,3.5]; centred [1.5,-1.5,-.5,.5] and [1,-1.5,-.5,1]
    # dot = 1.5 + 2.25 + .25 + .5 = 4.5; norms sqrt(5) and sqrt(4.5) -> 4.5 / sqrt(22.5)
    assert pair_metrics(scores, grades) == pytest.approx({"spearman": 4.5 / math.sqrt(22.5)})
    with pytest.raises(ValueError, match="0 or 1"):
        best_threshold(scores, grades)


def test_pair_metric_input_checks() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        pair_metrics([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="empty"):
        pair_metrics([], [])
    with pytest.raises(ValueError, match="NaN"):
        pair_metrics([0.1, float("nan")], [1, 0])


# ============================================================================================
# Pair metrics vs scikit-learn / scipy


@pytest.mark.parametrize("seed", range(5))
def test_pair_metrics_match_sklearn_and_scipy(seed: int) -> None:
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.integers(0, 2, n)
    scores = labels * 0.3 + rng.normal(0, 0.3, n)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    m = pair_metrics(scores, labels)
    pred = (scores >= m["threshold"]).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["f1"] == pytest.approx(f1_score(labels, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["spearman"] == pytest.approx(spearmanr(scores, labels).statistic)
    # the chosen threshold is the best among all possible cut points (brute force)
    best = max(accuracy_score(labels, (scores >= t).astype(int)) for t in np.append(scores, np.inf))
    assert m["accuracy"] == pytest.approx(best)
    graded = rng.integers(0, 6, n)
    assert spearman(scores, graded) == pytest.approx(spearmanr(scores, graded).statistic)


# ============================================================================================
# Retrieval, by hand

QRELS = {
    "q1": {"d1": 3, "d2": 2, "d3": 0, "d4": 1},
    "q2": {"d9": 1},  # not in the run -> scores 0
    "q3": {"d7": 0},  # nothing relevant -> left out of the averages
}
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d5": 0.7, "d4": 0.6, "d2": 0.5},
    "q3": {"d7": 0.4},
}


def test_retrieval_per_query_worked_example() -> None:
    ranking, rels = RUN["q1"], QRELS["q1"]
    assert rank_documents(ranking) == ["d3", "d1", "d5", "d4", "d2"]
    # relevant: d1 (3), d2 (2), d4 (1); retrieved at ranks 2, 5, 4
    assert reciprocal_rank(ranking, rels) == 0.5
    assert reciprocal_rank(ranking, rels, k=1) == 0.0
    # AP = (1/2 [d1 @2] + 2/4 [d4 @4] + 3/5 [d2 @5]) / 3 relevant = 1.6 / 3
    assert average_precision(ranking, rels) == pytest.approx(1.6 / 3)
    # AP@3 = (1/2) / 3: the divisor stays the number of relevant docs
    assert average_precision(ranking, rels, k=3) == pytest.approx(0.5 / 3)
    assert recall(ranking, rels, k=1) == 0.0
    assert recall(ranking, rels, k=3) == pytest.approx(1 / 3)
    assert recall(ranking, rels) == 1.0
    # DCG@3 = 0/log2(2) + 3/log2(3) + 0/log2(4); IDCG@3 = 3/log2(2) + 2/log2(3) + 1/log2(4)
    dcg3 = 3 / math.log2(3)
    idcg3 = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg(ranking, rels, k=3) == pytest.approx(dcg3 / idcg3)  # 0.39749
    # DCG@5 adds 1/log2(5) [d4 @4] + 2/log2(6) [d2 @5]; the ideal has only 3 relevant docs
    dcg5 = dcg3 + 1 / math.log2(5) + 2 / math.log2(6)
    assert ndcg(ranking, rels, k=5) == pytest.approx(dcg5 / idcg3)  # 0.65042
    assert ndcg(list(rank_documents(ranking)), rels, k=5) == pytest.approx(dcg5 / idcg3)  # ranked list input


def test_retrieval_means_worked_example() -> None:
    # averaged over q1 and q2 (q3 has nothing relevant); q2 is missing from the run and scores 0
    assert mrr_at_k(RUN, QRELS, k=10) == pytest.approx(0.5 / 2)
    assert mrr_at_k(RUN, QRELS, k=1) == 0.0
    assert map_at_k(RUN, QRELS) == pytest.approx(1.6 / 3 / 2)
    assert map_at_k(RUN, QRELS, k=3) == pytest.approx(0.5 / 3 / 2)
    assert recall_at_k(RUN, QRELS, k=3) == pytest.approx(1 / 3 / 2)
    idcg3 = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg_at_k(RUN, QRELS, k=3) == pytest.approx(3 / math.log2(3) / idcg3 / 2)
    m = retrieval_metrics(RUN, QRELS, ks=(1, 3))
    assert m == pytest.approx(
        {
            "mrr": 0.25,
            "map": 1.6 / 3 / 2,
            "ndcg": (3 / math.log2(3) + 1 / math.log2(5) + 2 / math.log2(6)) / idcg3 / 2,
            "mrr@1": 0.0,
            "ndcg@1": 0.0,
            "map@1": 0.0,
            "recall@1": 0.0,
            "mrr@3": 0.25,
            "ndcg@3": 3 / math.log2(3) / idcg3 / 2,
            "map@3": 0.5 / 3 / 2,
            "recall@3": 1 / 3 / 2,
        }
    )
    assert set(per_query_metrics(RUN, QRELS, ks=(1,))) == {"q1", "q2"}


def test_ties_break_by_doc_id_descending() -> None:
    # equal scores: 'c' before 'b' before 'a' (trec_eval order)
    assert rank_documents({"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.9}) == ["d", "c", "b", "a"]
    with pytest.raises(ValueError, match="twice"):
        reciprocal_rank(["a", "b", "a"], {"a": 1})
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics({}, {"q": {"d": 0}})
    with pytest.raises(ValueError, match="positive integer"):
        ndcg(["a"], {"a": 1}, k=0)


# ============================================================================================
# Retrieval vs pytrec_eval


def random_run_and_qrels(seed: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    docs = [f"doc{i:03d}" for i in range(120)]
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(25):
        qid = f"q{q}"
        n_ret = int(rng.integers(5, 60))
        retrieved = rng.choice(docs, size=n_ret, replace=False)
        if ties:
            scores = np.round(rng.random(n_ret), 1)
        else:
            scores = rng.permutation(n_ret) + rng.random()  # distinct
        run[qid] = {str(d): float(s) for d, s in zip(retrieved, scores, strict=True)}
        judged = rng.choice(docs, size=int(rng.integers(3, 30)), replace=False)
        grades = rng.integers(0, 4, size=judged.size)
        grades[0] = max(grades[0], 1)  # every query has a relevant doc
        qrels[qid] = {str(d): int(g) for d, g in zip(judged, grades, strict=True)}
    return run, qrels


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, False), (3, True)])
def test_retrieval_matches_pytrec_eval(seed: int, ties: bool) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run, qrels = random_run_and_qrels(seed, ties)
    ks = (1, 5, 10, 20)
    cuts = ",".join(map(str, ks))
    measures = {"map", "recip_rank", "ndcg", f"ndcg_cut.{cuts}", f"map_cut.{cuts}", f"recall.{cuts}"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ours = per_query_metrics(run, qrels, ks=(*ks, 1000))
    assert set(ours) == set(ref)
    for qid, r in ref.items():
        o = ours[qid]
        assert o["map"] == pytest.approx(r["map"]), qid
        assert o["ndcg"] == pytest.approx(r["ndcg"]), qid
        assert o["mrr"] == pytest.approx(r["recip_rank"]), qid
        assert o["mrr@1000"] == pytest.approx(r["recip_rank"]), qid  # k >= run length
        for k in ks:
            assert o[f"ndcg@{k}"] == pytest.approx(r[f"ndcg_cut_{k}"]), (qid, k)
            assert o[f"map@{k}"] == pytest.approx(r[f"map_cut_{k}"]), (qid, k)
            assert o[f"recall@{k}"] == pytest.approx(r[f"recall_{k}"]), (qid, k)
            # MRR@k = recip_rank of the run cut to its top k
            top_k = {d: run[qid][d] for d in rank_documents(run[qid])[:k]}
            cut_ref = pytrec_eval.RelevanceEvaluator({qid: qrels[qid]}, {"recip_rank"}).evaluate({qid: top_k})
            assert o[f"mrr@{k}"] == pytest.approx(cut_ref[qid]["recip_rank"]), (qid, k)
    # the corpus-level functions agree with the per-query means
    mean = retrieval_metrics(run, qrels, ks=ks)
    assert mean["ndcg@10"] == pytest.approx(np.mean([r["ndcg_cut_10"] for r in ref.values()]))
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(mean["ndcg@10"])
    assert map_at_k(run, qrels) == pytest.approx(np.mean([r["map"] for r in ref.values()]))
    assert map_at_k(run, qrels, 5) == pytest.approx(mean["map@5"])
    assert recall_at_k(run, qrels, 20) == pytest.approx(mean["recall@20"])
    assert mrr_at_k(run, qrels, 10) == pytest.approx(mean["mrr@10"])
    # ranked lists give the same as score dicts
    as_lists = {q: rank_documents(r) for q, r in run.items()}
    assert retrieval_metrics(as_lists, qrels, ks=ks) == pytest.approx(mean)


# ============================================================================================
# Classification


def test_classification_worked_example() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # correct: positions 0, 2, 3, 4 -> 4/6
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # class 0: tp 1, predicted 2, true 2 -> p 1/2 r 1/2 f 1/2
    # class 1: tp 2, predicted 3, true 2 -> p 2/3 r 1   f 2*2/(3+2) = 0.8
    # class 2: tp 1, predicted 1, true 2 -> p 1   r 1/2 f 2/(1+2) = 2/3
    p, r, f = precision_recall_f1(y_true, y_pred, average=None)
    np.testing.assert_allclose(p, [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(r, [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(f, [1 / 2, 0.8, 2 / 3])
    macro = precision_recall_f1(y_true, y_pred, average="macro")
    assert macro == pytest.approx(
        ((1 / 2 + 2 / 3 + 1) / 3, (1 / 2 + 1 + 1 / 2) / 3, (1 / 2 + 0.8 + 2 / 3) / 3)
    )
    # micro over all classes = accuracy
    assert precision_recall_f1(y_true, y_pred, average="micro") == pytest.approx((4 / 6, 4 / 6, 4 / 6))
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert confusion_matrix([0, 1], [1, 1], n_classes=4).shape == (4, 4)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], n_classes=2)


@pytest.mark.parametrize("seed", range(3))
def test_classification_matches_sklearn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    rng = np.random.default_rng(seed)
    n_classes = 5
    y_true = rng.integers(0, n_classes, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n_classes - 1, 200))  # class 4 rarely
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    for average in ("macro", "micro", "weighted", None):
        ours = precision_recall_f1(y_true, y_pred, average=average)
        ref = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)[:3]
        for o, r in zip(ours, ref, strict=True):
            np.testing.assert_allclose(o, r)
    binary_true, binary_pred = y_true % 2, y_pred % 2
    ref = precision_recall_fscore_support(binary_true, binary_pred, average="binary", zero_division=0)[:3]
    assert precision_recall_f1(binary_true, binary_pred, average="binary") == pytest.approx(ref)
    # a class never predicted nor true, listed explicitly: zero, like sklearn with zero_division=0
    labels = list(range(n_classes + 1))
    ours = precision_recall_f1(y_true, y_pred, average="macro", labels=labels)
    ref = precision_recall_fscore_support(y_true, y_pred, average="macro", labels=labels, zero_division=0)[:3]
    assert ours == pytest.approx(ref)
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, n_classes),
        sk_confusion_matrix(y_true, y_pred, labels=list(range(n_classes))),
    )


def test_metrics_module_needs_numpy_only() -> None:
    import subprocess
    import sys

    import deepsem.metrics as metrics

    with open(metrics.__file__, encoding="utf-8") as fh:
        source = fh.read()
    for banned in ("sklearn", "scipy", "torch", "pytrec_eval"):
        assert f"import {banned}" not in source and f"from {banned}" not in source
    # the file runs on its own, and imports nothing heavy
    code = (
        f"import runpy, sys; runpy.run_path({metrics.__file__!r}); "
        "print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
