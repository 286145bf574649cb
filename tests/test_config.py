import pytest

from deepsem.config import ConfigError, ModelConfig, TowerConfig, TrainConfig


def test_round_trip():
    cfg = ModelConfig(tower=TowerConfig(encoder="lstm", hidden_size=64, bidirectional=True), gamma=5.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    t = TrainConfig(loss="hinge", clip_norm=None, max_minutes=2)
    assert TrainConfig.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tower": {"hiden_size": 3}}, "unknown field(s) 'hiden_size'"),
        ({"tower": {"hidden_size": "big"}}, "field 'hidden_size' must be int"),
        ({"tower": {"hidden_size": True}}, "field 'hidden_size' must be int"),
        ({"tower": {"hidden_size": 0}}, "field 'hidden_size' must be > 0"),
        ({"tower": {"encoder": "transformer"}}, "field 'encoder' is 'transformer'"),
        ({"tower": {"dropout": 1.5}}, "field 'dropout' must be in [0, 1)"),
        ({"tower": {"vocab_size": 10**9}}, "too large"),
        ({"gamma": -1}, "field 'gamma' must be > 0"),
        ({"tower": []}, "expected an object"),
    ],
)
def test_bad_values_name_the_field(data, message):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data, where="m/config.json")
    assert message in str(info.value)
    assert "m/config.json" in str(info.value)


def test_train_config_checks():
    with pytest.raises(ConfigError, match="'loss'"):
        TrainConfig.from_dict({"loss": "mse"})
    with pytest.raises(ConfigError, match="warmup"):
        TrainConfig.from_dict({"warmup": 2.0})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0  # an int is accepted where a float is expected


def test_cosent_scale_is_checked_and_left_out_of_the_settings_when_unset():
    with pytest.raises(ConfigError, match="'cosent_scale' must be > 0"):
        TrainConfig.from_dict({"loss": "cosent", "cosent_scale": 0})
    # a run without it keeps the settings (and so the fingerprint) it had before the field existed
    assert "cosent_scale" not in TrainConfig().to_dict()
    assert "cosent_scale" not in TrainConfig(loss="cosent").to_dict()
    t = TrainConfig(loss="cosent+softmax", cosent_scale=12.5)
    assert t.to_dict()["cosent_scale"] == 12.5
    assert TrainConfig.from_dict(t.to_dict()) == t
