import pytest

from dawntrain.config import Config, parse_set, presets, resolve
from dawntrain.errors import ConfigError


def test_davidnet_preset_is_the_original_recipe():
    cfg = resolve("davidnet")
    assert (cfg.width, cfg.epochs, cfg.batch_size, cfg.lr) == (64, 24, 512, 0.4)
    assert (cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.dropout) == (0.9, True, 5e-4, 0.05)


def test_set_parses_toml_values_and_overrides_win():
    cfg = resolve(
        "davidnet", sets=["width=16", "lr=0.1", "nesterov=false"], overrides={"epochs": 3}
    )
    assert (cfg.width, cfg.lr, cfg.nesterov, cfg.epochs) == (16, 0.1, False, 3)
    assert parse_set(["data=sample"]) == {"data": "sample"}


def test_unknown_key_suggests_the_nearest_name():
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        resolve("davidnet", sets=["batch_sise=3"])


def test_wrong_type_and_impossible_values():
    with pytest.raises(ConfigError, match="'epochs' must be int"):
        resolve("davidnet", sets=["epochs=ten"])
    for bad in ["epochs=-1", "lr=0", "batch_size=0", "precision=fp8", "whiten_eps=0"]:
        with pytest.raises(ConfigError):
            resolve("davidnet", sets=[bad])


def test_unknown_preset_and_config_file(tmp_path):
    with pytest.raises(ConfigError, match="did you mean davidnet"):
        resolve("davidnt")
    f = tmp_path / "c.toml"
    f.write_text("width = 8\nepochs = 1\n")
    assert resolve("davidnet", config_file=f).width == 8
    f.write_text("widht = 8\n")
    with pytest.raises(ConfigError, match="c.toml: unknown config key 'widht'; did you mean width"):
        resolve("davidnet", config_file=f)


def test_every_preset_resolves_and_round_trips_through_toml(tmp_path):
    for name in presets():
        cfg = resolve(name)
        f = tmp_path / f"{name}.toml"
        f.write_text(cfg.to_toml())
        assert resolve(name, config_file=f) == cfg
    assert isinstance(Config().to_toml(), str)


def test_checkpoint_name_is_checked_at_once_and_takes_the_epochs_metrics():
    from dawntrain.config import checkpoint_file_name

    cfg = resolve("davidnet", sets=["checkpoint_name='ep{epoch}-{val_acc:.3f}.pt'"])
    metrics = {"epoch": 3, "val_acc": 0.91234, "val_loss": 0.3, "train_loss": 0.4, "lr": 0.1}
    assert checkpoint_file_name(cfg.checkpoint_name, metrics) == "ep3-0.912.pt"
    # An epoch without validation (eval_every) reads nan instead of failing.
    assert checkpoint_file_name(cfg.checkpoint_name, {"epoch": 2, "val_acc": None}) == "ep2-nan.pt"
    with pytest.raises(ConfigError, match="no field 'acc'; the fields are epoch, lr, train_loss"):
        resolve("davidnet", sets=["checkpoint_name='ep{epoch}-{acc}.pt'"])
    for bad in ["'ep{epoch'", "'best.pt'", "'ep{epoch}.ckpt'"]:
        with pytest.raises(ConfigError, match="checkpoint_name"):
            resolve("davidnet", sets=[f"checkpoint_name={bad}"])


def test_the_names_people_type_are_aliases_of_config_keys():
    cfg = resolve("davidnet", sets=["wd=0.1", "learning_rate=0.2", "bs=64", "tta=1"])
    assert (cfg.weight_decay, cfg.lr, cfg.batch_size, cfg.tta_level) == (0.1, 0.2, 64, 1)
    assert resolve("davidnet", sets=["weight-decay=0.3"]).weight_decay == 0.3
    with pytest.raises(
        ConfigError, match=r"unknown config key 'mixup'; `dawntrain train --print-config`"
    ):
        resolve("davidnet", sets=["mixup=0.2"])
