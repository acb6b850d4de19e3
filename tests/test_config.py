"""Config loading: presets, dotted overrides, and one clear line for every bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import (
    CaptionJobConfig,
    ClassMeansJobConfig,
    ClipDecoderTrainConfig,
    ConfigError,
    PredictJobConfig,
    TrainRegularizedConfig,
    load_config,
    parse_overrides,
    to_dict,
)
from core.tune.config import TuneJobConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "ray_jobs" / "configs"
# Preset file-name prefix → the job's config class (the longest matching prefix wins).
JOB_CONFIGS = {
    "caption_": CaptionJobConfig,
    "class_descriptions_": ClassMeansJobConfig,
    "train_regularized_": TrainRegularizedConfig,
    "predict_": PredictJobConfig,
    "train_clip_decoder_": ClipDecoderTrainConfig,
    "tune_": TuneJobConfig,
}


def _config_class(path: Path):
    matches = [prefix for prefix in JOB_CONFIGS if path.name.startswith(prefix)]
    assert matches, f"{path.name}: no job config class for this preset name"
    return JOB_CONFIGS[max(matches, key=len)]


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(path: Path) -> None:
    import yaml

    cfg = load_config(_config_class(path), path)
    # Every key the file sets arrives in the config unchanged (nothing silently ignored).
    loaded = to_dict(cfg)
    for key, value in (yaml.safe_load(path.read_text()) or {}).items():
        if not isinstance(value, dict) and not isinstance(loaded[key], dict):  # not a preset name
            assert loaded[key] == value, key


def test_overrides_are_typed_and_nested() -> None:
    assert parse_overrides(["a.b=16", "a.c=[x, y]", "d=true", "e=0.5", "f="]) == {
        "a": {"b": 16, "c": ["x", "y"]},
        "d": True,
        "e": 0.5,
        "f": "",
    }
    cfg = load_config(
        CaptionJobConfig, CONFIG_DIR / "caption_demo.yaml", ["captioner.batch_size=16", "limit=5"]
    )
    assert cfg.captioner.batch_size == 16 and cfg.limit == 5
    assert cfg.splits == ["train", "val", "test"]  # from the YAML


def test_section_preset_then_refinement() -> None:
    cfg = load_config(CaptionJobConfig, None, ["captioner=minigpt4_tiny", "captioner.batch_size=3"])
    assert cfg.captioner.backend == "minigpt4"
    assert cfg.captioner.minigpt4.tiny is True
    assert cfg.captioner.batch_size == 3
    # A preset replaces the whole section, including what the YAML set.
    cfg = load_config(
        CaptionJobConfig, CONFIG_DIR / "caption_minigpt4.yaml", ["captioner=reference"]
    )
    assert cfg.captioner.backend == "reference" and cfg.captioner.num_gpus == 0


def test_int_widens_to_float() -> None:
    cfg = load_config(CaptionJobConfig, None, ["captioner.num_gpus=1"])
    assert cfg.captioner.num_gpus == 1.0 and isinstance(cfg.captioner.num_gpus, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "captioner.batchsize=3",
            "captioner.batchsize: unknown key; allowed here: backend, batch_size",
        ),
        ("captioner.batch_size=x", "captioner.batch_size: got 'x', expected an integer"),
        ("captioner.batch_size=2.5", "captioner.batch_size: got 2.5, expected an integer"),
        ("captioner.batch_size=0", "captioner.batch_size: must be >= 1, got 0"),
        ("captioner.split_numbered=3", "captioner.split_numbered: got 3, expected true or false"),
        ("captioner.backend=llava", "captioner.backend: got 'llava', allowed: one of 'reference'"),
        ("captioner=nope", "captioner: unknown preset 'nope'; allowed: hf_vlm_tiny"),
        ("captioner.max_actors=0", "captioner.max_actors: must be >= min_actors (1), got 0"),
        ("captioner.backend=minigpt4", "captioner.minigpt4.blip2_path: required unless tiny=true"),
        ("splits=[train, dev]", "splits: got 'dev', allowed: train, val, test"),
        ("bogus=1", "bogus: unknown key"),
        ("ray=3", "ray: expected a mapping of settings, got 3"),
        ("noequals", "override 'noequals': expected key=value"),
    ],
)
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CaptionJobConfig, None, [override])
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(CaptionJobConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(CaptionJobConfig, bad)


def test_job_exits_before_work_on_bad_config(tmp_path: Path, capsys) -> None:
    from ray_jobs import caption

    with pytest.raises(SystemExit) as info:
        caption.main([f"storage={tmp_path}", "captioner.batch_size=-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "config error: captioner.batch_size: must be >= 1, got -1"
    assert list(tmp_path.iterdir()) == []  # nothing was generated or written
