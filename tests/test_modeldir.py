"""Model directories from elsewhere: old ones keep loading, damaged or hostile ones fail in one line.

The fixtures in tests/fixtures/model_dirs_v1 were written by deepsem before these checks existed
(tests/fixtures/make_model_dirs_v1.py), with the outputs they gave then.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import deepsem
from deepsem.config import MAX_LAYERS, MAX_PARAMETERS, MAX_WIDTH, ClassifierConfig, ModelConfig, RecommenderConfig
from deepsem.errors import ConfigError, DeepsemError, ModelFileError, ModelFileMissingError
from deepsem.modeldir import MAX_HEADER_BYTES
from deepsem.tasks.classification import Classifier
from deepsem.tasks.matching import SemanticModel
from deepsem.tasks.recommendation import Recommender
from deepsem.text import build_tokenizer, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "model_dirs_v1"
TEXTS = ["怎么还款", "如何还钱", "借款额度", "hello world", "我爱北京天安门", "good day"]
KINDS = ("two_tower", "classifier", "recommender")
MODEL_FIELD = {"two_tower": "model", "classifier": "classifier", "recommender": "recommender"}


def copy(kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / kind, tmp_path / kind))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def model_config(directory: Path, kind: str) -> dict:
    return json.loads((directory / "config.json").read_text())[MODEL_FIELD[kind]]


# -- directories written by the earlier version -------------------------------------------------------------------
def test_v1_two_tower_gives_the_same_vectors():
    model = deepsem.load(FIXTURES / "two_tower")
    assert isinstance(model, SemanticModel)
    np.testing.assert_allclose(model.encode(TEXTS), np.load(FIXTURES / "two_tower_expected.npy"), rtol=0, atol=1e-6)


def test_v1_classifier_gives_the_same_probabilities():
    clf = deepsem.load(FIXTURES / "classifier")
    assert isinstance(clf, Classifier)
    np.testing.assert_allclose(clf.predict_proba(TEXTS), np.load(FIXTURES / "classifier_expected.npy"), atol=1e-6)


def test_v1_recommender_gives_the_same_recommendations():
    rec = deepsem.load(FIXTURES / "recommender")
    assert isinstance(rec, Recommender)
    expected = json.loads((FIXTURES / "recommender_expected.json").read_text())
    for history, answer in zip(expected["histories"], expected["answers"], strict=True):
        got = rec.recommend(history, k=expected["k"])
        assert [i for i, _ in got] == [i for i, _ in answer]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in answer], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_every_task_round_trips_through_the_one_reader_and_writer(kind: str, tmp_path: Path):
    """Loaded through the registry and saved again, an old directory is the same files with the same contents
    (config.json but for the version that wrote it), and loads again to the same answers."""
    from deepsem.tasks import TASKS
    from deepsem.tasks import load as load_any

    model = load_any(FIXTURES / kind)
    assert type(model) is TASKS[json.loads((FIXTURES / kind / "config.json").read_text())["task"]].wrapper
    saved = model.save(tmp_path / kind)
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in (FIXTURES / kind).iterdir())
    old, new = (json.loads((d / "config.json").read_text()) for d in (FIXTURES / kind, saved))
    assert {k: v for k, v in new.items() if k != "deepsem_version"} == {
        k: v for k, v in old.items() if k != "deepsem_version"}
    assert list(new) == list(old)  # the same field order too
    for name in (p.name for p in saved.iterdir()):
        if name == "model.safetensors":
            a, b = load_file(FIXTURES / kind / name), load_file(saved / name)
            assert a.keys() == b.keys() and all(torch.equal(a[t], b[t]) for t in a)
        elif name != "config.json":
            assert (saved / name).read_bytes() == (FIXTURES / kind / name).read_bytes(), name
    again = load_any(saved)
    if kind == "two_tower":
        np.testing.assert_array_equal(again.encode(TEXTS), model.encode(TEXTS))
    elif kind == "classifier":
        np.testing.assert_array_equal(again.predict_proba(TEXTS), model.predict_proba(TEXTS))
    else:
        assert again.recommend(["i2", "i3"], k=4) == model.recommend(["i2", "i3"], k=4)


def test_the_known_tasks_come_from_the_registry(tmp_path: Path):
    from deepsem.modeldir import read_config
    from deepsem.tasks.registry import model_fields

    directory = copy("classifier", tmp_path)
    edit_json(directory / "config.json", lambda c: c.update(task="summariser", summary={}))
    with pytest.raises(ConfigError, match=f"expected one of {', '.join(model_fields())}$"):
        deepsem.load(directory)
    assert read_config(directory, {"summariser": "summary"})["task"] == "summariser"  # a task the caller knows
    with pytest.raises(ConfigError, match="field 'summary' is missing"):
        read_config(copy("two_tower", tmp_path), {"two-tower": "summary"})


def test_the_old_io_module_reads_config_in_a_fresh_process():
    import subprocess
    import sys

    code = ("from deepsem.io import read_config, load_model_dir; import sys; "
            f"print(read_config({str(FIXTURES / 'recommender')!r})['task'], "
            f"load_model_dir({str(FIXTURES / 'two_tower')!r})[0].config.tower.output_dim)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["recommender", "8"]


def test_loading_unpickles_nothing(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model directory was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for kind in KINDS:
        deepsem.load(FIXTURES / kind)


# -- item 1: sizes bounded before anything is allocated ------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "data", "field", "bound"),
    [
        (ModelConfig, {"tower": {"hidden_size": 10**9}}, "'hidden_size'", f"{MAX_WIDTH:,}"),
        (ModelConfig, {"tower": {"embedding_dim": 2_000_000, "vocab_size": 1000}}, "'embedding_dim'",
         f"{MAX_WIDTH:,}"),
        (ModelConfig, {"tower": {"num_layers": 10**6}}, "'num_layers'", f"{MAX_LAYERS:,}"),
        (ModelConfig, {"tower": {"vocab_size": 10**12}}, "'vocab_size'", "MAX_ROWS"),
        # each field within bounds, the product not: one tensor, then the whole model
        (ModelConfig, {"tower": {"vocab_size": 40_000_000, "embedding_dim": 128}}, "vocab_size x embedding_dim",
         "MAX_TENSOR_ELEMENTS"),
        (ModelConfig, {"tower": {"hidden_size": 8000, "num_layers": 16}}, "parameters", f"{MAX_PARAMETERS:,}"),
        (ModelConfig, {"tower": {"encoder": "cnn", "vocab_size": 10_000_000, "hidden_size": 10_000}},
         "vocab_size x 3 hidden_size", "MAX_TENSOR_ELEMENTS"),
        (ClassifierConfig, {"num_labels": 10**7}, "'num_labels'", "MAX_LABELS"),
        (ClassifierConfig, {"ngram_buckets": 10**9}, "'ngram_buckets'", "MAX_ROWS"),
        (ClassifierConfig, {"ngram_buckets": 40_000_000, "ngram_dim": 1000}, "ngram_buckets", "MAX_TENSOR_ELEMENTS"),
        (ClassifierConfig, {"num_labels": 1_000_000, "tower": {"output_dim": 16_000}}, "num_labels",
         "MAX_TENSOR_ELEMENTS"),
        (RecommenderConfig, {"n_items": 10**9}, "'n_items'", "MAX_ITEMS"),
        (RecommenderConfig, {"n_items": 90_000_000, "embedding_dim": 512}, "n_items", "MAX_TENSOR_ELEMENTS"),
        (RecommenderConfig, {"n_user_features": 10**8}, "'n_user_features'", "MAX_ROWS"),
        (RecommenderConfig, {"max_history": 10**9}, "'max_history'", "MAX_HISTORY"),
        (RecommenderConfig, {"title_encoder": "cnn", "n_title_tokens": 40_000_000, "embedding_dim": 64},
         "title tower", "MAX_TENSOR_ELEMENTS"),
    ],
)
def test_sizes_are_bounded_with_the_field_named(cls, data, field, bound):
    with pytest.raises(ConfigError) as info:
        cls.from_dict(data, where="m/config.json: x")
    message = str(info.value)
    assert message.startswith("m/config.json: x") and field in message and bound in message
    assert "\n" not in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400])
def test_float_fields_must_be_finite(value):
    with pytest.raises(ConfigError, match="'gamma' must be a finite number"):
        ModelConfig.from_dict({"gamma": value})


def test_real_sizes_stay_allowed():
    # the bench presets and the papers' settings: DSSM 30k trigrams -> 300 -> 300 -> 128, a 200k-word LSTM
    ModelConfig.from_dict({"tower": {"encoder": "dssm", "vocab_size": 30_000}})
    ModelConfig.from_dict({"tower": {"vocab_size": 200_000, "embedding_dim": 300, "hidden_size": 1024,
                                     "num_layers": 3}, "shared_towers": False})
    ClassifierConfig.from_dict({"num_labels": 5000, "ngram_buckets": 2_000_000, "ngram_dim": 100,
                                "tower": {"vocab_size": 100_000}})
    RecommenderConfig.from_dict({"n_items": 1_000_000, "n_title_tokens": 100_000, "title_encoder": "cnn"})


@pytest.mark.parametrize("kind", KINDS)
def test_huge_config_fails_before_allocation(kind: str, tmp_path: Path):
    directory = copy(kind, tmp_path)
    field = "tower" if kind != "recommender" else None

    def change(config: dict) -> None:
        target = config[MODEL_FIELD[kind]]
        (target[field] if field else target)["hidden_size"] = 10**9

    edit_json(directory / "config.json", change)
    with pytest.raises(ConfigError, match=r"config\.json.*'hidden_size' is too large: 1,000,000,000"):
        deepsem.load(directory)


# -- item 2: the config against the weights file's header, before allocation --------------------------------------
@pytest.mark.parametrize(
    ("kind", "path", "value", "tensor", "field"),
    [
        ("two_tower", ("tower", "hidden_size"), 4000, "tower.rnn.weight_", "tower.hidden_size = 4000"),
        ("two_tower", ("tower", "output_dim"), 9, "tower.proj.", "tower.output_dim = 9"),
        ("classifier", ("ngram_dim", ), 5, "ngrams.weight", "ngram_dim = 5"),
        ("classifier", ("tower", "hidden_size"), 7, "tower.", "tower.hidden_size = 7"),
        ("recommender", ("embedding_dim", ), 12, "item_tower.", "embedding_dim = 12"),
        ("recommender", ("hidden_size", ), 5, "user_tower.", "hidden_size = 5"),
    ],
)
def test_config_and_weights_disagree(kind, path, value, tensor, field, tmp_path: Path):
    directory = copy(kind, tmp_path)

    def change(config: dict) -> None:
        target = config[MODEL_FIELD[kind]]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    edit_json(directory / "config.json", change)
    with pytest.raises(ModelFileError) as info:
        deepsem.load(directory)
    message = str(info.value)
    assert "model.safetensors" in message and tensor in message and "in the file but config.json implies" in message
    assert field in message, message


def test_missing_and_foreign_tensors(tmp_path: Path):
    directory = copy("classifier", tmp_path)
    weights = load_file(directory / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "head.bias"}, directory / "model.safetensors")
    with pytest.raises(ModelFileError, match=r"tensor 'head\.bias' is missing"):
        deepsem.load(directory)
    save_file({**weights, "evil": torch.zeros(3)}, directory / "model.safetensors")
    with pytest.raises(ModelFileError, match=r"tensor 'evil' that config\.json does not describe"):
        deepsem.load(directory)


# -- item 3: damaged weights -----------------------------------------------------------------------------------------
def _good_bytes(kind: str) -> bytes:
    return (FIXTURES / kind / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda good: b"", "truncated or empty"),
        (lambda good: good[:5], "truncated or empty"),
        (lambda good: good[: len(good) // 2], "not a valid safetensors file"),
        (lambda good: good[:100], "truncated: the header claims"),
        (lambda good: (2**62).to_bytes(8, "little") + good[8:], "more than the"),
        (lambda good: (MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"x" * 64, "more than the"),
        (lambda good: (20).to_bytes(8, "little") + b"{not json at all!!!}" + good[28:], "not a valid safetensors"),
        (lambda good: bytes(range(256)) * 8, "header claims"),
        (lambda good: good[:8] + b"[" * (int.from_bytes(good[:8], "little")) + good[8 + int.from_bytes(good[:8],
                                                                                                      "little"):],
         "not a valid safetensors file"),
    ],
    ids=["empty", "five-bytes", "half", "cut-header", "header-bomb", "header-over-cap", "garbage-header", "noise",
         "nested-header"],
)
def test_damaged_weights_name_the_file_and_cause(make, cause, tmp_path: Path):
    directory = copy("two_tower", tmp_path)
    (directory / "model.safetensors").write_bytes(make(_good_bytes("two_tower")))
    with pytest.raises(ModelFileError) as info:
        deepsem.load(directory)
    message = str(info.value)
    assert str(directory / "model.safetensors") in message and cause in message and "\n" not in message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(kind: str, bad: float, tmp_path: Path):
    directory = copy(kind, tmp_path)
    weights = load_file(directory / "model.safetensors")
    name = sorted(k for k, v in weights.items() if v.ndim == 2)[0]
    weights[name][0, 0] = bad
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(ModelFileError, match=rf"tensor '{name}' holds 1 NaN or infinite value"):
        deepsem.load(directory)


def test_wrong_dtype_is_named(tmp_path: Path):
    directory = copy("two_tower", tmp_path)
    weights = load_file(directory / "model.safetensors")
    weights["bias"] = weights["bias"].half()
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(ModelFileError, match="tensor 'bias' is stored as F16, but deepsem models hold F32"):
        deepsem.load(directory)


# -- item 4: JSON anywhere in the directory -------------------------------------------------------------------------
NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("kind", "file"),
    [("two_tower", "config.json"), ("two_tower", "tokenizer.json"), ("classifier", "config.json"),
     ("recommender", "items.json"), ("recommender", "tokenizer.json")],
)
@pytest.mark.parametrize("content", [NESTED, '{"a": ' * 50_000 + "1" + "}" * 50_000, "1" * 5000, "\xff\xfe",
                                     '"just a string"', "[1, 2]", "null"])
def test_any_json_file_fails_clearly(kind: str, file: str, content: str, tmp_path: Path):
    directory = copy(kind, tmp_path)
    (directory / file).write_text(content, encoding="utf-8" if content != "\xff\xfe" else "latin-1")
    with pytest.raises(ConfigError) as info:
        deepsem.load(directory)
    assert file in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(task=["two-tower"]), "field 'task'"),
        (lambda c: c.update(model=[1]), "model: expected an object"),
        (lambda c: c["model"]["tower"].update(hidden_size="6"), "'hidden_size' must be int"),
        (lambda c: c["model"]["tower"].update(dropout=None), "'dropout' must be float"),
        (lambda c: c["model"].update(gamma=float("nan")), "'gamma' must be a finite number"),
    ],
)
def test_wrong_types_name_the_field(change, message, tmp_path: Path):
    directory = copy("two_tower", tmp_path)
    edit_json(directory / "config.json", change)
    with pytest.raises(ConfigError, match=message):
        deepsem.load(directory)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(ids=[["a"], 1, 2, 3, 4, 5]), "field 'ids' must be a list of strings"),
        (lambda d: d.update(ids=["a"] * 6), "same item id twice"),
        (lambda d: d.update(counts=[1, 2, 3, 4, 5, float("inf")]), "'counts'"),
        (lambda d: d.update(counts=[1, 2, 3, 4, 5, 10**400]), "'counts'"),
        (lambda d: d.update(categories=[[["x"]], [], [], [], [], []]), "'categories'"),
        (lambda d: d.update(titles=[1, 2, 3, 4, 5, 6]), "'titles'"),
        (lambda d: d.update(ids=["a"]), "entries for 1 items"),
    ],
)
def test_items_file_is_checked(change, message, tmp_path: Path):
    directory = copy("recommender", tmp_path)
    edit_json(directory / "items.json", change)
    with pytest.raises(ConfigError, match=message):
        deepsem.load(directory)


def test_faiss_index_is_checked(tmp_path: Path):
    directory = copy("recommender", tmp_path)
    good = (directory / "items.faiss").read_bytes()
    for damaged, message in ((b"", "bytes, but a Faiss flat index"), (good[:100], "bytes, but a Faiss flat index"),
                             (good[:-10], "not a readable Faiss index"),
                             (b"\0" * len(good), "not a readable Faiss index"),
                             (good[:-4] + np.float32(np.nan).tobytes(), "NaN or infinite")):
        (directory / "items.faiss").write_bytes(damaged)
        with pytest.raises(ModelFileError, match=message):
            deepsem.load(directory)
    (directory / "items.faiss").unlink()  # rebuilt from the weights: the same answers
    expected = json.loads((FIXTURES / "recommender_expected.json").read_text())
    assert [i for i, _ in deepsem.load(directory).recommend(["i0"], k=3)] == [i for i, _ in expected["answers"][0]]


# -- item 5: missing files, every loader ----------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "file"), [(k, f) for k in KINDS for f in ("config.json", "model.safetensors",
                                                                          "tokenizer.json")]
                         + [("recommender", "items.json")])
def test_missing_files(kind: str, file: str, tmp_path: Path):
    directory = copy(kind, tmp_path)
    (directory / file).unlink()
    with pytest.raises(ModelFileMissingError, match=file.replace(".", r"\.")) as info:
        deepsem.load(directory)
    assert isinstance(info.value, FileNotFoundError)  # as before


def test_every_loader_raises_deepsem_errors(tmp_path: Path):
    directory = copy("classifier", tmp_path)
    (directory / "tokenizer.json").write_text("[" * 10_000)
    for loader in (deepsem.load, Classifier.load, load_tokenizer):
        with pytest.raises(DeepsemError):
            loader(directory)
    with pytest.raises(ConfigError, match="not a two-tower model"):
        SemanticModel.load(directory)
    with pytest.raises(ConfigError, match="not a recommender"):
        Recommender.load(directory)


def test_subword_pipeline_must_be_deepsems(tmp_path: Path):
    tok = build_tokenizer("subword", ["hello world", "我爱北京"] * 20, max_size=60)
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("hello") == tok.encode("hello")
    edit_json(tmp_path / "hf_tokenizer.json", lambda h: h.update(normalizer={"type": "Replace", "pattern": {
        "Regex": "(a+)+$"}, "content": "b"}))
    with pytest.raises(ConfigError, match=r"hf_tokenizer\.json: field 'normalizer' is not the one deepsem"):
        load_tokenizer(tmp_path)
