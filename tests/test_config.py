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
    available_presets,
    default_preset_root,
    load_config,
    load_yaml,
    parse_overrides,
    to_dict,
)
from core.config.pipeline import PipelineJobConfig
from core.train.registry import get_method
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
    "train_linear_probe_": get_method("linear_probe").config_class,
    "pretrain_clip_": get_method("pretrain_clip").config_class,
    "pipeline_": PipelineJobConfig,
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


def _assert_arrived(loaded: dict, given: dict, where: str) -> None:
    """Every key of ``given`` arrives in ``loaded`` unchanged (nothing silently ignored)."""
    for key, value in given.items():
        if isinstance(value, dict):
            _assert_arrived(loaded[key], value, f"{where}.{key}")
        else:
            assert loaded[key] == value, f"{where}.{key}"


SECTION_PRESETS = sorted(CONFIG_DIR.glob("*/*.yaml"))


def test_section_presets_are_shipped() -> None:
    assert default_preset_root() == CONFIG_DIR
    assert available_presets(CONFIG_DIR, "captioner") == [
        "hf_vlm_tiny",
        "minigpt4_tiny",
        "minigpt4_vicuna7b",
        "reference",
    ]


@pytest.mark.parametrize("path", SECTION_PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_section_preset_loads(path: Path) -> None:
    import dataclasses

    section = path.parent.name
    # Any job with a section of that name will do; every one must take the preset.
    classes = [
        cls for cls in JOB_CONFIGS.values() if section in {f.name for f in dataclasses.fields(cls)}
    ]
    assert classes, f"{section}/: no job config has a section named {section}"
    for cls in classes:
        cfg = load_config(cls, None, [f"{section}={path.stem}"])
        _assert_arrived(to_dict(cfg)[section], load_yaml(path.read_text()), section)


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


def test_section_preset_named_in_yaml_then_refined(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("captioner: minigpt4_tiny\nlimit: 2\n")
    cfg = load_config(CaptionJobConfig, job, ["captioner.batch_size=4"])
    assert cfg.captioner.backend == "minigpt4" and cfg.captioner.minigpt4.tiny is True
    assert cfg.captioner.max_new_tokens == 16  # from the preset file
    assert cfg.captioner.batch_size == 4 and cfg.limit == 2
    # A preset named on the command line replaces the one the file named.
    cfg = load_config(CaptionJobConfig, job, ["captioner=hf_vlm_tiny"])
    assert cfg.captioner.backend == "hf_vlm" and cfg.captioner.minigpt4.tiny is False


def test_preset_root_is_a_parameter(tmp_path: Path) -> None:
    presets = tmp_path / "captioner"
    presets.mkdir()
    (presets / "mine.yaml").write_text("batch_size: 5\nnum_gpus: 5e-1\n")
    (presets / "broken.yaml").write_text("- not\n- a mapping\n")
    (presets / "typo.yaml").write_text("batchsize: 5\n")
    cfg = load_config(CaptionJobConfig, None, ["captioner=mine"], preset_root=tmp_path)
    assert cfg.captioner.batch_size == 5 and cfg.captioner.num_gpus == 0.5
    cases = {
        "captioner=reference": "captioner: unknown preset 'reference'; allowed: broken, mine, typo",
        "captioner=broken": "captioner: ",
        "captioner=typo": "captioner.batchsize: unknown key",
        "ray=local": "ray: unknown preset 'local'; allowed: none",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(CaptionJobConfig, None, [override], preset_root=tmp_path)
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-5", 1e-5),
        ("1E+3", 1000.0),
        ("1e5", 1e5),
        ("1.0e5", 1e5),
        ("1.0e-5", 1e-5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("-2.5E-3", -2.5e-3),
        # Everything else reads as PyYAML (YAML 1.1) reads it.
        ("10", 10),
        ("0x1F", 31),
        ("1_000", 1000),
        ("yes", True),
        ("null", None),
        ("'1e-5'", "1e-5"),
        ("1e5x", "1e5x"),
        ("e5", "e5"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_yaml_12_floats(text: str, expected: object) -> None:
    value = load_yaml(text)
    assert value == expected and type(value) is type(expected)


def test_float_forms_in_files_and_overrides(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "train.yaml"
    path.write_text("optim: {encoder_lr: 1e-5, head_lr: 1E+3, weight_decay: .5}\n")
    cfg = load_config(TrainRegularizedConfig, path)
    assert cfg.optim.encoder_lr == 1e-05 and isinstance(cfg.optim.encoder_lr, float)
    assert cfg.optim.head_lr == 1000.0 and cfg.optim.weight_decay == 0.5
    cfg = load_config(TrainRegularizedConfig, None, ["optim.encoder_lr=1e-5", "alpha=2e-1"])
    assert cfg.optim.encoder_lr == 1e-05 and isinstance(cfg.optim.encoder_lr, float)
    assert cfg.alpha == 0.2
    assert parse_overrides(["a=1e-5", "b=[1e-3, 3E-2]"]) == {"a": 1e-5, "b": [1e-3, 3e-2]}
    assert yaml.safe_load("1e-5") == "1e-5"  # PyYAML's own loader is left as it was


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
        (
            "captioner=nope",
            "captioner: unknown preset 'nope'; "
            "allowed: hf_vlm_tiny, minigpt4_tiny, minigpt4_vicuna7b, reference",
        ),
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


@pytest.mark.parametrize("flag", ["channels_last", "compile"])
def test_run_speed_flags(flag: str) -> None:
    """``run.channels_last`` / ``run.compile``: off by default, booleans, in every method's run
    section; a bad value is one line naming the key."""
    for cls in (
        TrainRegularizedConfig,
        ClipDecoderTrainConfig,
        get_method("linear_probe").config_class,
    ):
        assert getattr(load_config(cls, None, []).run, flag) is False
        assert getattr(load_config(cls, None, [f"run.{flag}=true"]).run, flag) is True
    for bad, shown in (("maybe", "'maybe'"), ("1", "1")):
        with pytest.raises(ConfigError) as info:
            load_config(ClipDecoderTrainConfig, None, [f"run.{flag}={bad}"])
        assert str(info.value) == f"run.{flag}: got {shown}, expected true or false"
    with pytest.raises(ConfigError, match=rf"^run.{flag}x: unknown key; allowed here: .*{flag}"):
        load_config(TrainRegularizedConfig, None, [f"run.{flag}x=true"])


def test_bad_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(CaptionJobConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(CaptionJobConfig, bad)
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"^--config: .* is not valid YAML \(line 2") as info:
        load_config(CaptionJobConfig, bad)
    assert "\n" not in str(info.value)


def test_job_exits_before_work_on_bad_config(tmp_path: Path, capsys) -> None:
    from ray_jobs import caption

    with pytest.raises(SystemExit) as info:
        caption.main([f"storage={tmp_path}", "captioner.batch_size=-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "config error: captioner.batch_size: must be >= 1, got -1"
    assert list(tmp_path.iterdir()) == []  # nothing was generated or written
