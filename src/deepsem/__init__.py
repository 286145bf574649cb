"""deepsem: learn what text means from weak signals, with LSTM-DSSM two-tower models.

Public API::

    import deepsem
    model, result = deepsem.train("pairs.tsv", out="runs/model", dev_data="dev.tsv")
    model = deepsem.load("runs/model")
    vectors = model.encode(["怎么还款", "how do I repay"])
"""

__version__ = "0.1.0"

from deepsem.config import ModelConfig, TowerConfig, TrainConfig
from deepsem.encoder import SemanticModel, load
from deepsem.index import Index
from deepsem.matching import TextPairs, evaluate_pairs, evaluate_retrieval, train

__all__ = [
    "Index",
    "ModelConfig",
    "SemanticModel",
    "TextPairs",
    "TowerConfig",
    "TrainConfig",
    "__version__",
    "evaluate_pairs",
    "evaluate_retrieval",
    "load",
    "train",
]
