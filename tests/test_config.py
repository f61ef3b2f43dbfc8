"""One config surface: every config field is a CLI flag generated from the field, flags
round-trip into the config over a `--config` YAML, and the TAGGER_* settings come from the
environment with errors that name the variable."""

from __future__ import annotations

import argparse
import types
from typing import Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, Field, ValidationError

from tagger.cli import add_config_flags, build_parser, config_from_args, flag_name, main
from tagger.config import (FROM_BACKBONE, IngestConfig, Settings, TagConfig, TrainConfig,
                           load_settings)

COMMANDS = {"ingest": IngestConfig, "train": TrainConfig, "tag": TagConfig, "evaluate": TagConfig}
REQUIRED = {  # the hand-written arguments each command needs before any config flag
    "ingest": ["catalog.csv", "--taxonomy", "taxonomy.yaml", "--lake", "lake"],
    "train": ["--lake", "lake"],
    "tag": ["--lake", "lake"],
    "evaluate": ["catalog.csv", "--lake", "lake"],
}
FIELDS = [(command, name) for command, cls in COMMANDS.items() for name in cls.model_fields]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _action(command: str, name: str) -> argparse.Action:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]._option_string_actions[flag_name(name)]


def _bounds(field) -> dict:
    return {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt")
            if hasattr(m, k)}


def _other_value(cls: type[BaseModel], name: str):
    """A value the field accepts that is not its default (bools are handled by the caller)."""
    field = cls.model_fields[name]
    kind = field.annotation
    if get_origin(kind) in (Union, types.UnionType):  # X | None -> X
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Literal:
        candidates = list(get_args(kind))
    elif kind is str:
        candidates = ["weights.safetensors"]
    else:
        b = _bounds(field)
        candidates = [b.get("ge"), b.get("le"), 1, 2, 0.5, 0.95, 33, 100]
        candidates = [kind(c) for c in candidates if c is not None]
    for value in candidates:
        try:
            if getattr(cls(**{name: value}), name) not in (field.default, None):
                return value
        except ValidationError:
            pass
    raise AssertionError(f"no other valid value for {cls.__name__}.{name}: extend _other_value")


@pytest.mark.parametrize("command,name", FIELDS)
def test_every_config_field_is_a_flag_that_round_trips(command, name):
    cls = COMMANDS[command]
    default = cls.model_fields[name].default
    if isinstance(default, bool):
        value, flag = not default, [flag_name(name) if not default else "--no-" + name.replace("_", "-")]
    elif isinstance(default, list):  # a repeatable flag
        value, flag = ["/mnt/a", "/mnt/b,c"], [flag_name(name), "/mnt/a", flag_name(name), "/mnt/b,c"]
    else:
        value = _other_value(cls, name)
        flag = [flag_name(name), str(value)]
    config = config_from_args(cls, _parse([command, *REQUIRED[command], *flag]))
    assert config == cls(**{name: value})  # that field set, every other one at its default
    assert getattr(config, name) == value != default


@pytest.mark.parametrize("command,name", FIELDS)
def test_flag_help_is_the_description_default_and_bounds(command, name):
    field = COMMANDS[command].model_fields[name]
    action = _action(command, name)
    assert action.default is None  # unset: a --config YAML value stays
    shown = action.help % {}  # what argparse prints (a % in a description is escaped)
    assert field.description and shown.startswith(field.description)
    if field.default is None:
        default = "the backbone's" if name in FROM_BACKBONE else "unset"
    elif isinstance(field.default, bool):
        default = "on" if field.default else "off"
    else:
        default = str(field.default)
    assert f"default: {default}" in shown
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    for key, bound in _bounds(field).items():
        assert f"{ops[key]} {bound}" in shown


def test_backbone_defaults_are_unset_train_fields():
    assert FROM_BACKBONE == {"image_size", "batch_size", "lr"}
    assert all(TrainConfig.model_fields[n].default is None for n in FROM_BACKBONE)


def test_bool_flags_both_ways_and_resume():
    assert config_from_args(TrainConfig, _parse(["train", "--lake", "l", "--no-pretrained"])).pretrained is False
    assert config_from_args(TrainConfig, _parse(["train", "--lake", "l", "--pretrained"])).pretrained is True
    assert config_from_args(TrainConfig, _parse(["train", "--lake", "l", "--resume"])).resume is True
    assert config_from_args(TrainConfig, _parse(["train", "--lake", "l", "--no-amp"])).amp is False
    assert config_from_args(TrainConfig, _parse(["train", "--lake", "l"])).resume is False


def test_literal_flag_is_choices(capsys):
    assert config_from_args(TrainConfig, _parse(["train", "--lake", "l", "--loss", "asl"])).loss == "asl"
    with pytest.raises(SystemExit) as e:
        _parse(["train", "--lake", "l", "--pos-weight", "log"])
    assert e.value.code == 2
    assert "argument --pos-weight: invalid choice: 'log'" in capsys.readouterr().err


def test_optional_flags_empty_or_zero_mean_none_where_the_model_says_so():
    def train(*flags):
        return config_from_args(TrainConfig, _parse(["train", "--lake", "l", *flags]))

    assert train("--ema-decay", "0").ema_decay is None
    assert train("--ema-decay", "").ema_decay is None
    assert train("--ema-decay", "0.999").ema_decay == 0.999
    assert train("--weights", "").weights is None
    assert train("--min-precision", "").min_precision is None
    assert train("--min-precision", "0.9").min_precision == 0.9
    assert train("--image-size", "96").image_size == 96
    with pytest.raises(ValueError, match=r"--image-size '': Input should be a valid integer"):
        train("--image-size", "")


def test_flags_override_the_yaml_only_when_given(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 3\nloss: focal\ncalibrate: false\nema_decay: 0.999\n")
    base = ["train", "--lake", "l", "--config", str(path)]
    config = config_from_args(TrainConfig, _parse(base))
    assert (config.epochs, config.loss, config.calibrate, config.ema_decay) == (3, "focal", False, 0.999)
    config = config_from_args(TrainConfig, _parse([*base, "--epochs", "5", "--calibrate",
                                                   "--ema-decay", "0"]))
    assert (config.epochs, config.loss, config.calibrate, config.ema_decay) == (5, "focal", True, None)


def test_bound_violation_is_one_clear_line_and_exit_2(tmp_path, caplog):
    assert main(["train", "--lake", str(tmp_path), "--image-size", "8"]) == 2
    assert ("Invalid TrainConfig: --image-size 8: Input should be greater than or equal to 32"
            in caplog.text) and "Traceback" not in caplog.text
    assert list(tmp_path.iterdir()) == []  # refused before anything ran
    assert main(["tag", "--lake", str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size 0: Input should be greater than or equal to 1" in caplog.text


def test_bad_yaml_names_the_file_and_the_known_fields(tmp_path, caplog):
    path = tmp_path / "train.yaml"
    path.write_text("epoch: 3\nval_fraction: 0.95\n")
    assert main(["train", "--lake", str(tmp_path / "lake"), "--config", str(path)]) == 2
    assert f"unknown field 'epoch' in {path}. Known: backbone, image_size" in caplog.text
    assert f"val_fraction in {path} 0.95: Input should be less than 0.9" in caplog.text


def test_wrong_type_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        _parse(["ingest", "c.csv", "--taxonomy", "t", "--lake", "l", "--workers", "many"])
    assert e.value.code == 2 and "argument --workers: invalid int value: 'many'" in capsys.readouterr().err


def test_a_new_field_gets_its_flag_with_no_other_edit():
    class Knobs(BaseModel):
        new_knob: float = Field(0.25, ge=0, le=1, description="A knob. 0.25: why.")
        mode: Literal["a", "b"] = Field("a", description="A mode.")

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Knobs)
    config = config_from_args(Knobs, parser.parse_args(["--new-knob", "0.5", "--mode", "b"]))
    assert config == Knobs(new_knob=0.5, mode="b")
    assert "(default: 0.25; >= 0, <= 1)" in parser.format_help()


def test_an_unsupported_field_type_is_a_clear_error():
    class Listy(BaseModel):
        names: dict[str, int] = Field(default_factory=dict, description="Names.")

    with pytest.raises(TypeError, match=r"No CLI flag for Listy.names: dict\[str, int\]"):
        add_config_flags(argparse.ArgumentParser(), Listy)


def test_settings_from_the_environment(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"TAGGER_{name.upper()}", raising=False)
    assert load_settings() == Settings(lake="lake", lock_wait_s=0, s3_max_attempts=8,
                                       onnx_cache=None, dask_address=None, dask_workers=2)
    env = {"LAKE": "s3://b/p", "LOCK_WAIT_S": "600", "S3_MAX_ATTEMPTS": "3",
           "ONNX_CACHE": "/tmp/onnx", "DASK_ADDRESS": "tcp://s:8786", "DASK_WORKERS": "5"}
    for key, value in env.items():
        monkeypatch.setenv(f"TAGGER_{key}", value)
    assert load_settings() == Settings(lake="s3://b/p", lock_wait_s=600, s3_max_attempts=3,
                                       onnx_cache="/tmp/onnx", dask_address="tcp://s:8786",
                                       dask_workers=5)


@pytest.mark.parametrize("variable,value,message", [
    ("TAGGER_LOCK_WAIT_S", "abc", "Input should be a valid number"),
    ("TAGGER_S3_MAX_ATTEMPTS", "0", "Input should be greater than or equal to 1"),
    ("TAGGER_DASK_WORKERS", "two", "Input should be a valid integer"),
])
def test_bad_setting_names_the_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError) as e:
        load_settings()
    assert str(e.value).startswith(f"Bad environment variable {variable}={value!r}: {message}")
    assert "unset it for the default" in str(e.value)


def test_onnx_cache_dir_from_settings(tmp_path, monkeypatch):
    from tagger.model.runtime import cache_dir

    monkeypatch.setenv("TAGGER_ONNX_CACHE", str(tmp_path / "onnx"))
    assert cache_dir() == tmp_path / "onnx"
    monkeypatch.delenv("TAGGER_ONNX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "product-tagger" / "onnx"


def test_dask_runner_from_settings(monkeypatch):
    from flows.tag_sharded import _dask

    monkeypatch.delenv("TAGGER_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("TAGGER_DASK_WORKERS", "3")
    assert _dask().cluster_kwargs["n_workers"] == 3
    monkeypatch.setenv("TAGGER_DASK_ADDRESS", "tcp://scheduler:8786")
    assert _dask().address == "tcp://scheduler:8786"
