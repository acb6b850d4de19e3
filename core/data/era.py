"""ERA (Event Recognition in Aerial videos; Mou et al., IEEE GRSM 2020, arXiv 2001.11394).

2,864 clips (2,866 on earlier versions of the project page) of 25 event classes, 5 s each at
24 fps, 640x640, from YouTube, with an official train/test split; distributed from the project
page, lcmou.github.io/ERA_Dataset. The copies of that page (and of its repository,
lcmou/ERA_Dataset) consulted for this reader show neither the archive's file tree nor a split
list file, so the reader takes the split from split-named folders, one sub-folder per event::

    <root>/Train/<event>/<clip>.mp4
    <root>/Test/<event>/<clip>.mp4

and is lenient where a copy may differ: split folders are matched without regard to case
(train/training, test/testing, val/validation) at any depth under ``root``, and any common video
extension is accepted. The class is the folder name as found. Clips carry no source-video
information, so the ``val`` split carved from train is chosen per clip (by a hash of its id).
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import pyarrow as pa

from core import storage
from core.data.manifest import ManifestError, assign_split
from core.data.video_frames import VIDEO_SUFFIXES, list_files

SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _split_of(rel: str, root: str) -> tuple[str, str]:
    """(split, class) of a clip at ``rel``: the last split-named folder two levels above it."""
    parts = PurePosixPath(rel).parts
    if len(parts) >= 3 and parts[-3].lower() in SPLIT_FOLDERS:
        return SPLIT_FOLDERS[parts[-3].lower()], parts[-2]
    raise ManifestError(
        f"{root}: clip {rel} is not at <Train|Test>/<event class>/<clip> (the ERA layout)"
    )


def era_videos(root: str, val_fraction: float = 0.0) -> pa.Table:
    """The ERA clips under ``root``: id (relative path without extension), path, label (the
    event folder), split and group (the id). ``val_fraction`` of the training clips, by a hash of
    the id, become ``val``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    clips = list_files(root, VIDEO_SUFFIXES)
    if not clips:
        raise ManifestError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    rows = []
    for rel in clips:
        split, label = _split_of(rel, root)
        video_id = str(PurePosixPath(rel).with_suffix(""))
        if split == "train" and val_fraction > 0:
            split = assign_split(video_id, (1 - val_fraction, val_fraction, 0.0))
        rows.append(
            {
                "id": video_id,
                "path": storage.join(root, rel),
                "label": label,
                "split": split,
                "group": video_id,
            }
        )
    counts = Counter(row["id"] for row in rows)
    dup = next((x for x, n in counts.items() if n > 1), None)
    if dup:
        raise ManifestError(f"{root}: clip {dup} is there twice (two video formats?)")
    trained = {row["label"] for row in rows if row["split"] != "test"}
    untrained = sorted({row["label"] for row in rows} - trained)
    if untrained:
        raise ManifestError(f"{root}: event classes with test clips but none in Train: {untrained}")
    return pa.Table.from_pylist(rows)
