"""deepsem: learn what text means from weak signals, with LSTM-DSSM two-tower models.

Public API::

    import deepsem
    model, result = deepsem.train("pairs.tsv", out="runs/model", dev_data="dev.tsv")
    model = deepsem.load("runs/model")
    vectors = model.encode(["怎么还款", "how do I repay"])
    clf, _ = deepsem.train_classifier("news.tsv", out="runs/news", dev="dev.tsv")
    deepsem.load("runs/news").predict(["央行宣布降息"], k=3)
    rec, _ = deepsem.train_recommender("ml-100k/", out="runs/ml100k")
    deepsem.load("runs/ml100k").recommend(["50", "172", "181"], k=10)
"""

__version__ = "0.1.0"

from deepsem.classification import Classifier, evaluate_classifier, train_classifier
from deepsem.config import ClassifierConfig, ModelConfig, RecommenderConfig, TowerConfig, TrainConfig
from deepsem.encoder import SemanticModel, load
from deepsem.index import Index
from deepsem.matching import TextPairs, evaluate_pairs, evaluate_ranking, evaluate_retrieval, train
from deepsem.recommend import Recommender, evaluate_recommender, train_recommender

__all__ = [
    "Classifier",
    "ClassifierConfig",
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
    "evaluate_retrieval",
    "load",
    "train",
    "train_classifier",
    "train_recommender",
]
