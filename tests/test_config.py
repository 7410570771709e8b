import pytest

from bljust.config import Config, ConfigError, dump_config, load_config
from tests.conftest import REPO


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["model.d_model=96", "optim.betas=[0.9, 0.99]", "train.amp=false", "optim.lr=3e-4"])
    assert cfg.model.d_model == 96 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.train.amp is False and cfg.optim.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("override, message", [
    ("model.d_modle=96", "unknown config key"),
    ("model.d_model=abc", "expected an integer"),
    ("model.arch=transformer", "is not one of"),
    ("model.num_heads=5", "must divide"),
    ("train.max_steps=0", "max_steps"),
    ("nosuch.key=1", "unknown config key"),
    ("model.d_model", "section.key=value"),
])
def test_bad_config_names_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_recipes_load():
    for name in ("tiny.yaml", "demo.yaml", "benchmark.yaml"):
        load_config(REPO / "recipes" / name)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_retired_key_is_ignored_with_a_warning(caplog):
    """Models and configs written before train.max_bad_steps was replaced still load."""
    import logging

    from bljust.config import config_from_dict

    with caplog.at_level(logging.WARNING, logger="bljust"):
        cfg = config_from_dict({"train": {"max_bad_steps": 100, "max_steps": 7}})
    assert cfg.train.max_steps == 7 and cfg.train.max_bad_step_fraction == 0.02
    assert "train.max_bad_steps is retired" in caplog.text


@pytest.mark.parametrize("override", ["decode.lm=lm/3gram.arpa", "pl.decode=lm"])
def test_a_transducer_refuses_the_word_lm(override):
    """The lexicon beam search decodes CTC posteriors: asking it of a transducer fails at load, not mid-run."""
    load_config(None, [override])  # a CTC model's
    with pytest.raises(ConfigError, match="CTC models only.*model.loss is rnnt"):
        load_config(None, [override, "model.loss=rnnt"])


def test_a_config_without_the_transducer_keys_is_a_ctc_one():
    """Configs (and so models and run keys) written before model.loss existed mean CTC, as they did."""
    from bljust.config import config_from_dict

    assert config_from_dict({"model": {"d_model": 96}}).model.loss == "ctc"
