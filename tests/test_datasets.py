"""UCF-101, ERA and BAR readers and frame extraction, on tiny fixtures in each published layout."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.config import ConfigError, load_config
from core.config.datasets import DatasetManifestConfig
from core.data.bar import bar_manifest
from core.data.era import era_videos
from core.data.manifest import ManifestError, read_manifest
from core.data.ucf101 import clip_group, ucf101_midframes, ucf101_videos
from core.data.video_frames import (
    extract_frames_local,
    extract_video_frames,
    frame_positions,
    read_frames,
)

# PyAV writes the test clips (and decodes them); the readers' listings need no decoder.

# Eight frames, each one solid colour far from the others (survives lossy coding).
COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
    (0, 0, 0),
]


def write_clip(path: Path, colours=COLOURS, codec: str = "mpeg4", size: int = 32) -> Path:
    """A short clip, one solid colour per frame."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        for colour in colours:
            pixels = np.zeros((size, size, 3), dtype=np.uint8)
            pixels[:] = colour
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def column_map(table, key: str, value: str) -> dict:
    return dict(zip(table.column(key).to_pylist(), table.column(value).to_pylist(), strict=True))


def centre_colour(path: str) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    return pixels[pixels.shape[0] // 2, pixels.shape[1] // 2]


# --------------------------------------------------------------------------------------------
# UCF-101 in its official layout
# --------------------------------------------------------------------------------------------

# (folder/class name, file-name spelling): one class is spelled differently in its file names.
UCF_CLASSES = [
    ("ApplyEyeMakeup", "ApplyEyeMakeup"),
    ("HandstandPushups", "HandStandPushups"),
    ("YoYo", "YoYo"),
]
TEST_CLIPS = [(1, 1), (2, 1)]  # (group, clip): split 1 tests on groups 1-7
TRAIN_CLIPS = [(8, 1), (8, 2), (9, 1), (10, 1), (11, 1), (12, 1)]
CORRUPT = "YoYo/v_YoYo_g09_c01.avi"
MISSING = "YoYo/v_YoYo_g10_c01.avi"


def _entry(folder: str, spelling: str, group: int, clip: int) -> str:
    return f"{folder}/v_{spelling}_g{group:02d}_c{clip:02d}.avi"


@pytest.fixture(scope="module")
def ucf101_root(tmp_path_factory) -> Path:
    """``UCF-101/<Class>/v_*.avi`` + ``ucfTrainTestlist/`` (CRLF), with one corrupt clip and one
    listed clip missing."""
    root = tmp_path_factory.mktemp("ucf101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    class_ind = [f"{i + 1} {folder}" for i, (folder, _) in enumerate(UCF_CLASSES)]
    (lists / "classInd.txt").write_text("\r\n".join(class_ind) + "\r\n")
    train, test = [], []
    for i, (folder, spelling) in enumerate(UCF_CLASSES):
        for group, clip in TRAIN_CLIPS:
            train.append(f"{_entry(folder, spelling, group, clip)} {i + 1}")
        for group, clip in TEST_CLIPS:
            test.append(_entry(folder, spelling, group, clip))
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    (lists / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    for line in train + test:
        entry = line.split()[0]
        if entry == MISSING:
            continue
        if entry == CORRUPT:
            (root / "UCF-101" / entry).parent.mkdir(parents=True, exist_ok=True)
            (root / "UCF-101" / entry).write_bytes(b"RIFF" + b"\x00garbage" * 50)
            continue
        write_clip(root / "UCF-101" / entry)
    return root


def test_ucf101_rows_and_splits_follow_the_split_files(ucf101_root: Path) -> None:
    videos, errors = ucf101_videos(str(ucf101_root), split=1, val_fraction=0.4)
    by_split = defaultdict(set)
    for row in videos.to_pylist():
        by_split[row["split"]].add(row["id"] + ".avi")
    listed_test = {_entry(f, s, g, c) for f, s in UCF_CLASSES for g, c in TEST_CLIPS}
    listed_train = {_entry(f, s, g, c) for f, s in UCF_CLASSES for g, c in TRAIN_CLIPS}
    assert by_split["test"] == listed_test
    assert by_split["train"] | by_split["val"] == listed_train - {MISSING}
    assert by_split["train"] and by_split["val"]  # val carved from train
    assert errors.to_pylist() == [
        {
            "id": MISSING[:-4],
            "path": str(ucf101_root / MISSING),
            "reason": "file not found",
        }
    ]
    # Labels are the classInd names (the folder), also where the file name is spelled otherwise.
    labels = column_map(videos, "id", "label")
    assert labels["HandstandPushups/v_HandStandPushups_g08_c01"] == "HandstandPushups"
    # No group (gXX of one class) is in two splits.
    splits_of_group = defaultdict(set)
    for row in videos.to_pylist():
        splits_of_group[row["group"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of_group.values())
    # The same setting gives the same val split.
    again, _ = ucf101_videos(str(ucf101_root), split=1, val_fraction=0.4)
    assert again.column("split").to_pylist() == videos.column("split").to_pylist()


def test_ucf101_flat_folder_gives_the_same_clips(ucf101_root: Path, tmp_path: Path) -> None:
    flat = tmp_path / "ucf"
    (flat / "UCF-101").mkdir(parents=True)
    (flat / "ucfTrainTestlist").symlink_to(ucf101_root / "ucfTrainTestlist")
    for clip in (ucf101_root / "UCF-101").rglob("*.avi"):
        (flat / "UCF-101" / clip.name).symlink_to(clip)
    nested, _ = ucf101_videos(str(ucf101_root), val_fraction=0.4)
    flat_videos, _ = ucf101_videos(str(flat), val_fraction=0.4)
    assert flat_videos.drop_columns(["path"]) == nested.drop_columns(["path"])


def test_ucf101_bad_split_files_name_the_file_and_line(tmp_path: Path) -> None:
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 YoYo\r\n")
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\r\n")
    (lists / "trainlist01.txt").write_text("YoYo/v_YoYo_g08_c01.avi 1\r\n")
    with pytest.raises(ManifestError, match=r"trainlist01.txt: line 1: label 1 but classInd"):
        ucf101_videos(str(tmp_path))
    (lists / "trainlist01.txt").write_text("Juggling/v_Juggling_g08_c01.avi 2\r\n")
    with pytest.raises(ManifestError, match=r"trainlist01.txt: line 1: class 'Juggling'"):
        ucf101_videos(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"trainlist02\.txt"):
        ucf101_videos(str(tmp_path), split=2)
    assert clip_group("YoYo", "v_YoYo_g08_c03.avi") == "YoYo_g08"
    with pytest.raises(ManifestError, match="v_<Class>_gXX_cYY"):
        clip_group("YoYo", "yoyo.avi")


def test_ucf101_midframes_read_as_published(tmp_path: Path) -> None:
    images = tmp_path / "UCF-101-midframes"
    split = {"train": [], "val": [], "test": []}
    names = {"train": [(8, 1), (9, 1)], "val": [(8, 2)], "test": [(1, 1), (2, 1)]}
    for label, (cls, folder) in enumerate(
        [("ApplyEyeMakeup", "Apply_Eye_Makeup"), ("YoYo", "Yo_Yo")]
    ):
        for split_name, clips in names.items():
            for group, clip in clips:
                rel = f"{folder}/v_{cls}_g{group:02d}_c{clip:02d}.jpg"
                split[split_name].append([rel, label, folder])
                if rel != "Yo_Yo/v_YoYo_g02_c01.jpg":  # one listed image is missing
                    (images / folder).mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8), (label * 200, 0, 0)).save(images / rel)
    (tmp_path / "split_zhou_UCF101.json").write_text(json.dumps(split))
    table, errors = ucf101_midframes(str(tmp_path))
    rows = {r["id"]: r for r in table.to_pylist()}
    for split_name, items in split.items():
        listed = {rel for rel, _, _ in items} - {"Yo_Yo/v_YoYo_g02_c01.jpg"}
        assert {i for i, r in rows.items() if r["split"] == split_name} == listed
    assert rows["Yo_Yo/v_YoYo_g08_c01.jpg"]["label"] == "Yo_Yo"
    assert rows["Yo_Yo/v_YoYo_g08_c01.jpg"]["video"] == "Yo_Yo/v_YoYo_g08_c01"
    assert errors.column("id").to_pylist() == ["Yo_Yo/v_YoYo_g02_c01.jpg"]
    (tmp_path / "split_zhou_UCF101.json").write_text(json.dumps({"train": []}))
    with pytest.raises(ManifestError, match=r"split_zhou_UCF101\.json: no 'val' list"):
        ucf101_midframes(str(tmp_path))


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def test_frame_positions() -> None:
    assert frame_positions(8, 1) == [4]
    assert frame_positions(7, 1) == [3]
    assert frame_positions(8, 3) == [1, 4, 6]
    assert frame_positions(2, 5) == [0, 1]
    assert frame_positions(0, 1) == []


@pytest.mark.parametrize("codec,suffix", [("mpeg4", "avi"), ("libx264", "mp4")])
def test_middle_frame_is_the_middle_frame(tmp_path: Path, codec: str, suffix: str) -> None:
    clip = write_clip(tmp_path / f"v_X_g01_c01.{suffix}", codec=codec)
    video = {"id": "X/v_X_g01_c01", "path": str(clip), "label": "X", "split": "test"}
    rows = extract_video_frames(video, str(tmp_path / "frames"))
    assert [(r["frame"], r["id"], r["video"], r["error"]) for r in rows] == [
        (4, "X/v_X_g01_c01_f4.jpg", "X/v_X_g01_c01", "")
    ]
    assert rows[0]["path"] == str(tmp_path / "frames" / "X" / "v_X_g01_c01_f4.jpg")
    assert np.abs(centre_colour(rows[0]["path"]) - COLOURS[4]).max() < 24
    rows = extract_video_frames(video, str(tmp_path / "frames"), count=3)
    assert [r["frame"] for r in rows] == [1, 4, 6]
    for row in rows:
        assert np.abs(centre_colour(row["path"]) - COLOURS[row["frame"]]).max() < 24
        assert (row["label"], row["split"]) == ("X", "test")


def test_unreadable_videos_become_error_rows(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF" + b"\x00garbage" * 50)
    good = write_clip(tmp_path / "good.avi")
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    listing = [
        {"id": name, "path": str(tmp_path / f"{name}.avi"), "label": "c", "split": "train"}
        for name in ("bad", "good", "missing", "truncated")
    ]
    frames, errors = extract_frames_local(pa.Table.from_pylist(listing), str(tmp_path / "out"))
    assert frames.column("video").to_pylist() == ["good"]
    reasons = column_map(errors, "id", "reason")
    assert sorted(reasons) == ["bad", "missing", "truncated"]
    assert reasons["missing"] == "file not found"
    assert reasons["bad"].startswith("cannot decode video")
    assert len(read_frames(str(good), 100)) == len(COLOURS)  # more asked than there are


# --------------------------------------------------------------------------------------------
# ERA and BAR
# --------------------------------------------------------------------------------------------


def test_era_train_test_class_folders(tmp_path: Path) -> None:
    events = ["Baseball", "TrafficCollision", "NonEvent"]
    for split, count in (("Train", 6), ("Test", 2)):
        for event in events:
            for i in range(count):
                path = tmp_path / "ERA" / split / event / f"{event}_{split}_{i:03d}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"listed, not decoded here")
    videos = era_videos(str(tmp_path), val_fraction=0.3)
    rows = videos.to_pylist()
    assert len(rows) == 3 * 8
    assert sum(r["split"] == "test" for r in rows) == 6
    assert all(("Test" in r["id"]) == (r["split"] == "test") for r in rows)
    assert {r["split"] for r in rows if "Train" in r["id"]} == {"train", "val"}
    assert {r["label"] for r in rows} == set(events)
    assert all(r["group"] == r["id"] for r in rows)
    (tmp_path / "ERA" / "stray.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"stray.mp4 is not at <Train\|Test>/<event class>"):
        era_videos(str(tmp_path))


def _bar(root: Path, counts: dict[str, tuple[int, int]]) -> dict:
    metadata, n = {}, defaultdict(int)
    for folder, index in (("train", 0), ("test", 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for cls, sizes in counts.items():
            for _ in range(sizes[index]):
                stem = f"{cls}_{n[cls]}"
                n[cls] += 1
                Image.new("RGB", (8, 8), (30, 60, 90)).save(root / folder / f"{stem}.jpg")
                metadata[stem] = {"cls": cls, "source": "google", "train": folder == "train"}
    (root / "metadata.json").write_text(json.dumps(metadata))
    return metadata


def test_bar_flat_train_test_folders(tmp_path: Path) -> None:
    counts = {"climbing": (3, 1), "diving": (4, 2), "pole vaulting": (2, 1)}
    metadata = _bar(tmp_path, counts)
    table = bar_manifest(str(tmp_path), val_fraction=0.3)
    rows = table.to_pylist()
    for cls, (train, test) in counts.items():
        of_class = [r for r in rows if r["label"] == cls]
        assert sum(r["split"] == "test" for r in of_class) == test
        assert sum(r["split"] in ("train", "val") for r in of_class) == train
    assert all(r["id"].startswith("test/") == (r["split"] == "test") for r in rows)
    assert "train/pole vaulting_0.jpg" in table.column("id").to_pylist()
    metadata["climbing_0"]["train"] = False
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ManifestError, match=r"'climbing_0' has train=False but the image is in"):
        bar_manifest(str(tmp_path))


def test_job_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match="dataset: got 'ucf'"):
        load_config(DatasetManifestConfig, None, ["dataset=ucf", "root=/r", "output=/o"])
    with pytest.raises(ConfigError, match="split: must be 1, 2 or 3"):
        load_config(
            DatasetManifestConfig, None, ["dataset=ucf101", "root=/r", "output=/o", "split=4"]
        )


def test_job_bar_needs_no_ray(tmp_path: Path, capsys) -> None:
    from ray_jobs.dataset_manifest import main

    _bar(tmp_path / "BAR", {"climbing": (2, 1), "throwing": (2, 1)})
    result = main(["dataset=bar", f"root={tmp_path / 'BAR'}", f"output={tmp_path / 'out'}"])
    assert read_manifest(result.manifest).num_rows == 6
    assert pq.read_table(result.errors).num_rows == 0
    assert f"manifest: {tmp_path / 'out' / 'manifest.parquet'}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# The job on Ray: UCF-101 clips → frames
# --------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_job_extracts_frames_on_ray(ray_local, ucf101_root: Path, tmp_path: Path, capsys) -> None:
    from ray_jobs.dataset_manifest import main

    out = tmp_path / "manifest"
    args = [f"root={ucf101_root}", f"output={out}", "frames=2", "val_fraction=0.4"]
    result = main(["dataset=ucf101", *args])
    manifest = read_manifest(result.manifest)
    videos, _ = ucf101_videos(str(ucf101_root), val_fraction=0.4)
    split_of = column_map(videos, "id", "split")
    rows = manifest.to_pylist()
    decodable = set(split_of) - {CORRUPT[:-4]}
    assert {r["video"] for r in rows} == decodable
    assert len(rows) == 2 * len(decodable)  # frames 2 and 6 of 8 of every clip
    assert {r["frame"] for r in rows} == {2, 6}
    assert all(r["split"] == split_of[r["video"]] for r in rows)  # frames stay with their clip
    assert all(Path(r["path"]).is_file() for r in rows)
    errors = pq.read_table(result.errors).to_pylist()
    assert sorted(e["id"] for e in errors) == sorted([CORRUPT[:-4], MISSING[:-4]])
    printed = capsys.readouterr().out
    assert f"manifest: {out / 'manifest.parquet'}" in printed
    assert "errors: 2 could not be used" in printed


def test_pipeline_builds_the_manifest_stage_config_from_its_own_keys() -> None:
    """The pipeline's ``dataset:`` section and source become the dataset job's config."""
    from core.config.pipeline import PipelineJobConfig

    cfg = load_config(
        PipelineJobConfig,
        None,
        [
            "source=ucf101",
            "root=/data/UCF-101",
            "storage=/out",
            "dataset.split=2",
            "dataset.frames=3",
            "dataset.val_fraction=0.25",
            "dataset.jpeg_quality=80",
        ],
    )
    job = cfg.dataset_manifest_job("/out/manifest")
    assert job == DatasetManifestConfig(
        dataset="ucf101",
        root="/data/UCF-101",
        output="/out/manifest",
        split=2,
        frames=3,
        val_fraction=0.25,
        jpeg_quality=80,
        ray=cfg.ray,
    )
    job.validate("")
