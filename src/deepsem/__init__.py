"""deepsem: learn what text means from weak signals, with LSTM-DSSM two-tower models.

Public API::

    import deepsem
    model, result = deepsem.train("pairs.tsv", out="runs/model", dev="dev.tsv")
    model = deepsem.load("runs/model")
    vectors = model.encode(["怎么还款", "how do I repay"])
    clf, _ = deepsem.train_classifier("news.tsv", out="runs/news", dev="dev.tsv")
    deepsem.load("runs/news").predict(["央行宣布降息"], k=3)
    rec, _ = deepsem.train_recommender("ml-100k/", out="runs/ml100k")
    deepsem.load("runs/ml100k").recommend(["50", "172", "181"], k=10)
"""

# the modules' old names stay attributes of the package (deepsem.recommend.load_movielens in the README)
from deepsem import classification, encoder, matching, recommend  # noqa: F401  # isort: split
from deepsem.config import ClassifierConfig, ModelConfig, RecommenderConfig, TowerConfig, TrainConfig
from deepsem.index import Index
from deepsem.tasks import load
from deepsem.tasks.classification import Classifier, evaluate_classifier, train_classifier
from deepsem.tasks.matching import SemanticModel, TextPairs, evaluate_pairs, evaluate_ranking, evaluate_retrieval, train
from deepsem.tasks.recommendation import Recommender, evaluate_recommender, train_recommender
from deepsem.tasks.rerank import CrossEncoder, evaluate_rerank, train_rerank
from deepsem.version import __version__

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "CrossEncoder",
    "Index",
    "ModelConfig",
    "Recommender",
    "RecommenderConfig",
    "SemanticModel",
    "TextPairs",
    "TowerConfig",
    "TrainConfig",
    "__version__",
    "evaluate_classifier",
    "evaluate_pairs",
    "evaluate_ranking",
    "evaluate_recommender",
    "evaluate_rerank",
    "evaluate_retrieval",
    "load",
    "train",
    "train_classifier",
    "train_recommender",
    "train_rerank",
]
