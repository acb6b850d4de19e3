"""Dataclass configs, YAML presets and dotted command-line overrides.

Every job's configuration is a tree of dataclasses. :mod:`core.config.loader` is the generic
machinery (YAML, section presets, overrides, type and value checks); the other modules hold one
job family's schema each. Everything is re-exported here, so ``from core.config import X`` works.
"""

from core.config.captioning import (
    CaptionerConfig,
    CaptionJobConfig,
    HFVLMConfig,
    ImageLoadConfig,
    MiniGPT4Config,
    ReferenceConfig,
)
from core.config.class_means import ClassMeansJobConfig
from core.config.common import ClipConfig, DemoDataConfig, OptimConfig, RayConfig
from core.config.datasets import DatasetManifestConfig
from core.config.demo import DemoJobConfig
from core.config.loader import (
    PRESET_KEY,
    ConfigError,
    ConfigYAMLLoader,
    at,
    available_presets,
    build,
    check,
    config_from_dict,
    default_preset_root,
    load_config,
    load_yaml,
    merge,
    parse_overrides,
    to_dict,
    validate,
)
from core.config.nus_wide import NusWideManifestConfig
from core.config.pipeline import PipelineJobConfig
from core.config.predict import PredictJobConfig
from core.config.training import (
    ClipDecoderModelConfig,
    ClipDecoderTrainConfig,
    TrainRegularizedConfig,
    TrainRunConfig,
)

__all__ = [
    "PRESET_KEY",
    "CaptionJobConfig",
    "CaptionerConfig",
    "ClassMeansJobConfig",
    "ClipConfig",
    "ClipDecoderModelConfig",
    "ClipDecoderTrainConfig",
    "ConfigError",
    "ConfigYAMLLoader",
    "DatasetManifestConfig",
    "DemoDataConfig",
    "DemoJobConfig",
    "HFVLMConfig",
    "ImageLoadConfig",
    "MiniGPT4Config",
    "NusWideManifestConfig",
    "OptimConfig",
    "PipelineJobConfig",
    "PredictJobConfig",
    "RayConfig",
    "ReferenceConfig",
    "TrainRegularizedConfig",
    "TrainRunConfig",
    "at",
    "available_presets",
    "build",
    "check",
    "config_from_dict",
    "default_preset_root",
    "load_config",
    "load_yaml",
    "merge",
    "parse_overrides",
    "to_dict",
    "validate",
]
