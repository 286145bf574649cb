"""Old import paths keep working after the redesign: each names the same objects as its new home."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("deepsem.matching", "deepsem.tasks.matching", ["train", "TextPairs", "evaluate_pairs", "evaluate_ranking",
                                                   "evaluate_retrieval", "SemanticModel"]),
    ("deepsem.classification", "deepsem.tasks.classification", ["Classifier", "train_classifier",
                                                               "evaluate_classifier", "read_labelled"]),
    ("deepsem.recommend", "deepsem.tasks.recommendation", ["Recommender", "train_recommender", "load_movielens",
                                                          "evaluate_recommender", "split_sequences"]),
    ("deepsem.encoder", "deepsem.tasks.matching", ["SemanticModel"]),
    ("deepsem.encoder", "deepsem.tasks", ["load"]),
    ("deepsem.io", "deepsem.modeldir", ["build_and_load", "read_weights_header", "load_weights", "CONFIG_FILE"]),
    ("deepsem.index.lexical", "deepsem.data.lexical", ["LexicalIndex", "lexical_tokens", "ROWS_FILE"]),
    ("deepsem.index.negatives", "deepsem.data.lexical", ["bm25_ranking"]),
]


@pytest.mark.parametrize(("old", "new", "names"), MOVED)
def test_old_module_paths_name_the_same_objects(old: str, new: str, names: list[str]) -> None:
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), f"{old}.{name}"


def test_package_root_api_is_unchanged() -> None:
    import deepsem

    for name in ("Classifier", "ClassifierConfig", "Index", "ModelConfig", "Recommender", "RecommenderConfig",
                 "SemanticModel", "TextPairs", "TowerConfig", "TrainConfig", "__version__", "evaluate_classifier",
                 "evaluate_pairs", "evaluate_ranking", "evaluate_recommender", "evaluate_retrieval", "load", "train",
                 "train_classifier", "train_recommender"):
        assert hasattr(deepsem, name), name
    assert deepsem.recommend.load_movielens is deepsem.tasks.recommendation.load_movielens  # the README's spelling


def test_old_module_names_are_package_attributes_in_a_fresh_process() -> None:
    import subprocess
    import sys

    code = ("import deepsem; print(deepsem.recommend.load_movielens.__module__, deepsem.matching.train.__module__, "
            "deepsem.classification.Classifier.__module__, deepsem.encoder.SemanticModel.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["deepsem.data.interactions", "deepsem.tasks.matching", "deepsem.tasks.classification",
                   "deepsem.tasks.matching"]


def test_old_io_functions_keep_their_old_signatures(tmp_path) -> None:
    from pathlib import Path

    import deepsem.io as io

    fixtures = Path(__file__).parent / "fixtures" / "model_dirs_v1"
    assert io.read_config(fixtures / "classifier")["task"] == "classifier"
    model, tokenizer, config = io.load_model_dir(fixtures / "two_tower")
    assert config["task"] == "two-tower"
    saved = io.save_model_dir(tmp_path / "copy", model, tokenizer)
    assert io.read_config(saved)["task"] == "two-tower"
