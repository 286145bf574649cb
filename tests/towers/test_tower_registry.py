"""The tower registry: names defined once, each spec true to the tower it builds, no import circle with config."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deepsem.config
import deepsem.towers
from deepsem.config import ENCODERS, ConfigError, ModelConfig, RecommenderConfig, TowerConfig
from deepsem.towers import TOWERS, TRIGRAM_ENCODERS, build_tower, default_tokenizer, register
from deepsem.towers.recurrent import CELLS, RECURRENT_ENCODERS, build_rnn
from deepsem.towers.registry import TowerSpec

TOWERS_DIR = Path(deepsem.towers.__file__).parent


def small(encoder: str, **kw) -> TowerConfig:
    options = {"vocab_size": 50, "embedding_dim": 6, "hidden_size": 5, "num_layers": 2, "output_dim": 4, **kw}
    return TowerConfig(encoder=encoder, **options)


@pytest.mark.parametrize("encoder", list(TOWERS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_size_estimate_is_the_built_towers_weight_matrices(encoder: str, bidirectional: bool) -> None:
    # the bounds of deepsem.config are checked on this estimate before anything is allocated: the built tower
    # is the reference
    config = small(encoder, bidirectional=bidirectional)
    tower = build_tower(config)
    assert isinstance(tower, TOWERS[encoder].build)
    estimated = sorted(elements for _, elements in config.tensor_sizes())
    assert estimated == sorted(p.numel() for p in tower.parameters() if p.ndim >= 2)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gate_counts_are_the_built_cells(cell: str) -> None:
    rnn = build_rnn(cell, input_size=3, hidden=7)
    rows = {p.shape[0] for name, p in rnn.named_parameters() if p.ndim == 2}
    assert rows == {CELLS[cell].gates * 7}
    assert TOWERS[cell].gates == CELLS[cell].gates and TOWERS[cell].recurrent


def test_names_and_their_properties_come_from_the_registry() -> None:
    assert tuple(TOWERS) == ENCODERS  # deepsem.config's names are the registry's
    assert ENCODERS[0] == TowerConfig().encoder  # the default first: it leads every list of choices
    assert set(RECURRENT_ENCODERS) == {name for name, spec in TOWERS.items() if spec.recurrent} == set(CELLS)
    assert set(TRIGRAM_ENCODERS) == {name for name, spec in TOWERS.items() if spec.tokenizer == "trigram"}
    for name, spec in TOWERS.items():
        assert spec.name == name
        config = TowerConfig(encoder=name)
        assert (config.hidden_size, config.num_layers) == (spec.hidden_size, spec.num_layers)
        assert default_tokenizer(name) == (spec.tokenizer or "char")
        assert f"``{name}``" in (deepsem.towers.__doc__ or "")  # the docstring table is generated


def test_old_names_stay_importable_from_config() -> None:
    for name in ("ENCODERS", "TITLE_ENCODERS", "RECURRENT_ENCODERS", "TRIGRAM_ENCODERS", "build_tower", "build_rnn",
                 "run_rnn", "recurrent_sizes", "ENCODER_DEFAULTS", "RECURRENT_DEFAULT"):
        assert hasattr(deepsem.config, name), name
    assert deepsem.config.build_tower is build_tower


def test_unknown_names_keep_their_messages() -> None:
    with pytest.raises(ConfigError, match=r"field 'encoder' is 'transformer'; expected one of lstm-peephole, lstm"):
        ModelConfig.from_dict({"tower": {"encoder": "transformer"}})
    with pytest.raises(ConfigError, match=r"field 'encoder' is 'dssm'; expected one of lstm, lstm-peephole"):
        RecommenderConfig.from_dict({"encoder": "dssm"})
    with pytest.raises(ValueError, match="unknown recurrent encoder 'cnn'"):
        build_rnn("cnn", 3, 4)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_tower(_bare("nope"))


def _bare(encoder: str) -> TowerConfig:
    config = small("lstm")
    config.encoder = encoder  # past validation, as a hand-built config could be
    return config


def test_a_name_is_registered_once() -> None:
    spec = TOWERS["dssm"]
    with pytest.raises(ValueError, match="already registered"):
        register(TowerSpec("dssm", spec.summary, spec.build, spec.sizes, spec.hidden_size, spec.num_layers))


def test_tower_modules_import_config_for_typing_only() -> None:
    # config.py imports the towers at module level: a tower module that imported deepsem.config at run time
    # would close the circle again
    for path in TOWERS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level, outside `if TYPE_CHECKING:`
            if isinstance(node, ast.ImportFrom):
                assert node.module != "deepsem.config", path.name
            if isinstance(node, ast.Import):
                assert all(alias.name != "deepsem.config" for alias in node.names), path.name

