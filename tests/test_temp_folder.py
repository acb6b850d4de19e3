"""Building the tiny presets leaves nothing in the temp folder, also when building fails.

Every Ray worker and actor builds its own tiny models, so one leaked folder per build piles up
(32 were left by one suite run and the demo before this was fixed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import open_clip
import pytest

from core.captioning.base import GenerationSettings
from core.captioning.hf_vlm import HFVLMCaptionModel
from core.captioning.minigpt4 import MiniGPT4CaptionModel
from core.config import HFVLMConfig, MiniGPT4Config
from core.models import open_clip_models

ROOT = Path(__file__).resolve().parents[1]

BUILD_EVERY_TINY_PRESET = """
import os, tempfile
assert tempfile.gettempdir() == os.environ["TMPDIR"], tempfile.gettempdir()
from core.captioning.base import GenerationSettings
from core.captioning.hf_vlm import HFVLMCaptionModel
from core.captioning.minigpt4 import MiniGPT4CaptionModel
from core.config import HFVLMConfig, MiniGPT4Config
from core.models.clip_decoder import build_clip_decoder
from core.models.open_clip_models import build_clip, build_transforms

build_transforms("tiny-vit")
build_clip("tiny-vit", "", seed=0)
build_clip_decoder(32, backbone="tresnet-tiny", seed=0)
settings = GenerationSettings(max_new_tokens=1)
for template in ("vicuna", "llama2"):
    MiniGPT4CaptionModel(MiniGPT4Config(template=template, tiny=True), settings, device="cpu")
HFVLMCaptionModel(HFVLMConfig(tiny=True), settings, device="cpu")
print("built every tiny preset")
"""


def test_building_every_tiny_preset_leaves_the_temp_folder_empty(tmp_path: Path) -> None:
    """A fresh process (as a Ray worker is) with TMPDIR pointing at an empty folder."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    result = subprocess.run(
        [sys.executable, "-c", BUILD_EVERY_TINY_PRESET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built every tiny preset" in result.stdout
    assert sorted(p.name for p in temp.iterdir()) == []


@pytest.fixture()
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temp folder, moved to an empty folder for the test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _fail(*args, **kwargs):
    raise RuntimeError("loading failed")


def test_failed_tiny_builds_leave_the_temp_folder_empty(
    temp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = GenerationSettings(max_new_tokens=1)
    monkeypatch.setattr(MiniGPT4CaptionModel, "_load", _fail)
    with pytest.raises(RuntimeError, match="loading failed"):
        MiniGPT4CaptionModel(MiniGPT4Config(tiny=True), settings, device="cpu")
    monkeypatch.setattr(HFVLMCaptionModel, "_load", _fail)
    with pytest.raises(RuntimeError, match="loading failed"):
        HFVLMCaptionModel(HFVLMConfig(tiny=True), settings, device="cpu")

    # Registration of the tiny open_clip configs failing half-way.
    monkeypatch.setattr(open_clip, "list_models", lambda: [])
    monkeypatch.setattr(open_clip, "add_model_config", _fail)
    with pytest.raises(RuntimeError, match="loading failed"):
        open_clip_models.register_tiny_configs()
    assert sorted(p.name for p in temp.iterdir()) == []
