"""``deepsem export`` / :func:`deepsem.deploy.export.export_onnx`: every task's parts, checked by onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.config import ClassifierConfig, ModelConfig, RecommenderConfig, TowerConfig
from deepsem.deploy.export import check_export, export_onnx, onnx_models, part_names
from deepsem.errors import ModelFileError
from deepsem.models import TwoTowerModel
from deepsem.models.classifier import TextClassifier
from deepsem.models.recommender import TwoTowerRecommender

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_dirs_v1"
TASK_DIRS = ["two_tower", "classifier", "recommender"]


@pytest.mark.parametrize("name", TASK_DIRS)
def test_every_task_exports_and_matches_torch(name: str, tmp_path: Path):
    held = deepsem.load(FIXTURES / name)
    written = export_onnx(held, tmp_path / "m.onnx")
    assert tmp_path / "m.onnx" in written and all(p.exists() for p in written)
    for part, (max_diff, min_cosine) in check_export(held, tmp_path / "m.onnx").items():
        assert max_diff <= 1e-5, part
        assert min_cosine > 0.99999
    model = onnx.load(tmp_path / "m.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["deepsem.part"] == part_names(held.model)[0]
    assert meta["deepsem.task"] == deepsem.tasks.read_config(FIXTURES / name, deepsem.tasks.model_fields())["task"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "length"]  # dynamic axes


def test_recommender_item_vectors_travel_with_the_user_tower(tmp_path: Path):
    held = deepsem.load(FIXTURES / "recommender")
    export_onnx(held, tmp_path / "rec.onnx")
    vectors = np.load(tmp_path / "rec.items.npy", allow_pickle=False)
    ids = json.loads((tmp_path / "rec.items.json").read_text())
    np.testing.assert_array_equal(vectors, held.item_vectors())
    assert ids == list(held.catalogue.ids)


def test_vocabulary_file_gives_the_ids(tmp_path: Path):
    held = deepsem.load(FIXTURES / "classifier")  # a trigram tokenizer: no tokenizer.json, a vocabulary
    written = export_onnx(held, tmp_path / "c.onnx")
    assert tmp_path / "c.tokenizer.json" not in written
    vocab = (tmp_path / "c.vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == held.tokenizer.vocab_size
    assert [vocab.index(t) for t in vocab[:5]] == [held.tokenizer.token_to_id(t) for t in vocab[:5]]
    meta = {p.key: p.value for p in onnx.load(tmp_path / "c.onnx").metadata_props}
    assert "not expressible" in meta["deepsem.tokenizer_notes"]
    assert json.loads(meta["deepsem.labels"]) == list(held.labels)


def test_char_tokenizer_travels_as_a_hugging_face_file(tmp_path: Path):
    from tokenizers import Tokenizer

    held = deepsem.load(FIXTURES / "two_tower")
    export_onnx(held, tmp_path / "t.onnx")
    hf = Tokenizer.from_file(str(tmp_path / "t.tokenizer.json"))
    texts = ["你好世界", "Hello, World!", "怎么还款 ok"]
    assert [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)] == held.tokenizer.encode_batch(texts)


@pytest.mark.parametrize("shared", [True, False])
def test_two_tower_parts(shared: bool, tmp_path: Path):
    torch.manual_seed(0)
    net = TwoTowerModel(ModelConfig(shared_towers=shared, tower=TowerConfig(
        encoder="gru", vocab_size=30, embedding_dim=8, hidden_size=6, output_dim=4, bidirectional=True)))
    assert list(onnx_models(net)) == (["query"] if shared else ["query", "doc"])
    written = export_onnx(net, tmp_path / "tt.onnx")
    assert (tmp_path / "tt.doc.onnx" in written) == (not shared)
    report = check_export(net, tmp_path / "tt.onnx")
    assert set(report) == set(part_names(net))
    assert max(d for d, _ in report.values()) <= 1e-5


def test_multi_label_classifier_with_ngrams(tmp_path: Path):
    torch.manual_seed(0)
    net = TextClassifier(ClassifierConfig(num_labels=4, multi_label=True, ngram_buckets=50, ngram_order=3,
                                          tower=TowerConfig(encoder="lstm-coupled", vocab_size=40, embedding_dim=8,
                                                            hidden_size=6, output_dim=5, pooling="mean")))
    export_onnx(net, tmp_path / "ml.onnx")
    max_diff, _ = check_export(net, tmp_path / "ml.onnx")["classifier"]
    assert max_diff <= 1e-5


def test_recommender_with_a_title_tower_and_no_features(tmp_path: Path):
    torch.manual_seed(0)
    net = TwoTowerRecommender(RecommenderConfig(n_items=12, n_categories=3, n_title_tokens=20, n_user_features=0,
                                               embedding_dim=8, hidden_size=6, output_dim=4,
                                               encoder="lstm-peephole", title_encoder="lstm"))
    net.item_tower.set_features(torch.randint(0, 4, (13, 2)), torch.randint(0, 21, (13, 5)))
    export_onnx(net, tmp_path / "r.onnx")
    max_diff, _ = check_export(net, tmp_path / "r.onnx")["user"]
    assert max_diff <= 1e-5


def test_int8_is_smaller_and_close(tmp_path: Path):
    held = deepsem.load(FIXTURES / "two_tower")
    export_onnx(held, tmp_path / "f.onnx")
    export_onnx(held, tmp_path / "q.onnx", quantize="int8")
    ops = {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    assert "DynamicQuantizeLSTM" in ops
    _, min_cosine = check_export(held, tmp_path / "q.onnx")["query"]
    assert min_cosine > 0.99  # int8 weights: cosine to the fp32 vectors, random inputs
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(held, tmp_path / "x.onnx", quantize="int4")


def test_a_file_from_other_weights_is_refused(tmp_path: Path):
    held = deepsem.load(FIXTURES / "two_tower")
    export_onnx(held, tmp_path / "m.onnx")
    with torch.no_grad():
        held.model.query_tower.proj.bias.add_(0.1)
    with pytest.raises(ModelFileError, match="other weights"):
        held.use_backend("onnx", tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        held.use_backend("onnx", tmp_path / "absent.onnx")


def test_cli_export(tmp_path: Path):
    result = CliRunner().invoke(app, ["export", "--model", str(FIXTURES / "two_tower"), "--out",
                                      str(tmp_path / "out" / "tower.onnx"), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out' / 'tower.onnx'}" in result.output
    assert "query: onnxruntime against torch on random inputs" in result.output
    bad = CliRunner().invoke(app, ["export", "--model", str(FIXTURES / "two_tower"), "--out", str(tmp_path),
                                   "--format", "onnx"])
    assert bad.exit_code != 0 and "is a folder" in bad.output


def test_export_never_replaces_a_file_unasked(tmp_path: Path):
    held = deepsem.load(FIXTURES / "two_tower")
    mine = tmp_path / "m.vocab.txt"  # a file of the user's, where the vocabulary would go
    mine.write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match=r"m\.vocab\.txt"):
        export_onnx(held, tmp_path / "m.onnx")
    assert mine.read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "m.onnx").exists()  # refused before anything is written
    args = ["export", "--model", str(FIXTURES / "two_tower"), "--out", str(tmp_path / "m.onnx")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "already there" in result.output and "--overwrite" in result.output
    assert mine.read_text(encoding="utf-8") == "keep me"
    written = export_onnx(held, tmp_path / "m.onnx", overwrite=True)
    assert mine in written and mine.read_text(encoding="utf-8").splitlines()[0] == "[PAD]"
