"""Video clips → frame images + manifest rows, decoded with PyAV in Ray Data tasks.

Image models see video datasets (UCF-101, ERA) through a few frames per clip: the middle frame by
default (what CLIP-style benchmarks use), or ``frames`` evenly spaced ones. Each frame is written
as a JPEG named ``<video id>_f<k>.jpg`` (``k``: the frame's 0-based index in the clip) and becomes
one manifest row carrying its clip's ``video`` id, ``frame`` index, label and split, so frames of
one clip never straddle two splits and evaluation can aggregate per clip.

A clip that cannot be read (missing, not a video, truncated past use) becomes one error row
(``id, path, reason``) instead of stopping the job; the readers' listings use the same schema.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image

from core import storage

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")
MANIFEST_FILE = "manifest.parquet"
ERRORS_FILE = "errors.parquet"
FRAMES_FOLDER = "frames"

#: Columns of a clip listing (what the readers return): one row per video.
VIDEO_COLUMNS = ("id", "path", "label", "split")
ERROR_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("reason", pa.string())])
FRAME_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("video", pa.string()),
        ("frame", pa.int64()),
    ]
)


class VideoDecodeError(ValueError):
    """A clip that cannot be used; the message says why."""


def error_table(rows: list[dict[str, str]]) -> pa.Table:
    """Error rows (id, path, reason) as a table, empty but typed when there are none."""
    return pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)


def list_files(root: str, suffixes: tuple[str, ...]) -> list[str]:
    """Paths relative to ``root`` of the files under it ending in ``suffixes`` (one listing),
    skipping hidden files and folders."""
    fs, inner = storage.resolve(root)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{root}: not a folder")
    found = []
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        if info.type != pafs.FileType.File or not info.base_name.lower().endswith(suffixes):
            continue
        rel = info.path[len(inner) :].strip("/")
        if not any(part.startswith(".") for part in rel.split("/")):
            found.append(rel)
    return sorted(found)


def frame_positions(num_frames: int, count: int) -> list[int]:
    """Indices of ``count`` evenly spaced frames: the centre of each of ``count`` equal segments.

    ``count=1`` gives the middle frame (``num_frames // 2``); a clip shorter than ``count`` gives
    each of its frames once.
    """
    if num_frames <= 0 or count <= 0:
        return []
    return sorted({(2 * k + 1) * num_frames // (2 * count) for k in range(count)})


@contextmanager
def _open(path: str) -> Iterator[Any]:
    """A PyAV input container of a local path or a URI (read through pyarrow's filesystem)."""
    import av

    if not storage.is_uri(path):
        with av.open(path) as container:
            yield container
        return
    fs, inner = storage.resolve(path)
    with fs.open_input_file(inner) as source, av.open(source) as container:
        yield container


def _count_packets(path: str) -> int:
    """Frames in the clip, counted from its packets (demuxing only, no decoding)."""
    with _open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """The ``wanted`` frames as RGB arrays, and how many frames were decoded in all."""
    got: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        for decoded, frame in enumerate(container.decode(stream), start=1):
            index = decoded - 1
            if index in wanted:
                got[index] = frame.to_ndarray(format="rgb24")
                if len(got) == len(wanted):
                    break
    return got, decoded


def read_frames(path: str, count: int = 1) -> list[tuple[int, np.ndarray]]:
    """``count`` evenly spaced frames of the clip at ``path`` as (index, HxWx3 uint8 RGB).

    Frames are counted from the clip's packets, then only the chosen ones are converted. Raises
    ``VideoDecodeError`` for a clip that is missing, not a video, or that the decoder rejects; a
    clip whose decoder stops early without an error is sampled again over the frames it gave.
    """
    import av

    try:
        total = _count_packets(path)
        if total == 0:
            raise VideoDecodeError("no video frames")
        wanted = set(frame_positions(total, count))
        got, decoded = _decode(path, wanted)
        if len(got) < len(wanted):
            if decoded == 0:
                raise VideoDecodeError("no frame could be decoded")
            got, _ = _decode(path, set(frame_positions(decoded, count)))
    except FileNotFoundError:
        raise VideoDecodeError("file not found") from None
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        # PyAV's errors carry FFmpeg's own words in strerror; str() adds errno and the path.
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
        raise VideoDecodeError(f"cannot decode video ({reason})") from None
    return sorted(got.items())


def frame_path(frames_root: str, video_id: str, index: int) -> str:
    """Where frame ``index`` of clip ``video_id`` is written: ``<video id>_f<index>.jpg``."""
    return storage.join(frames_root, f"{video_id}_f{index}.jpg")


def extract_video_frames(
    video: dict[str, Any], frames_root: str, count: int = 1, quality: int = 95
) -> list[dict[str, Any]]:
    """Frame rows of one clip (``video``: a row of a clip listing), or one error row.

    Every row has the same keys (those of ``FRAME_SCHEMA`` plus ``error``, "" when fine) so a
    Ray Data block of mixed rows has one schema. Used by :func:`extract_frames` in Ray tasks and
    directly in tests.
    """
    try:
        frames = read_frames(video["path"], count)
        rows = []
        for index, pixels in frames:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
            dest = frame_path(frames_root, video["id"], index)
            storage.write_bytes(dest, buffer.getvalue())
            rows.append(
                {
                    "id": f"{video['id']}_f{index}.jpg",
                    "path": dest,
                    "label": video["label"],
                    "split": video["split"],
                    "video": video["id"],
                    "frame": index,
                    "error": "",
                }
            )
        return rows
    except (VideoDecodeError, OSError) as exc:
        reason = str(exc) if isinstance(exc, VideoDecodeError) else f"cannot write frame ({exc})"
        return [
            {
                "id": video["id"],
                "path": video["path"],
                "label": video["label"],
                "split": video["split"],
                "video": video["id"],
                "frame": -1,
                "error": reason,
            }
        ]


def _split_rows(rows: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
    good = sorted((r for r in rows if not r["error"]), key=lambda r: r["id"])
    bad = sorted((r for r in rows if r["error"]), key=lambda r: r["id"])
    frames = pa.Table.from_pylist(
        [{k: r[k] for k in FRAME_SCHEMA.names} for r in good], schema=FRAME_SCHEMA
    )
    errors = error_table([{"id": r["id"], "path": r["path"], "reason": r["error"]} for r in bad])
    return frames, errors


def extract_frames_local(
    videos: pa.Table, frames_root: str, count: int = 1, quality: int = 95
) -> tuple[pa.Table, pa.Table]:
    """:func:`extract_frames` without Ray, in this process (small listings, tests)."""
    rows = [
        row
        for video in videos.select(list(VIDEO_COLUMNS)).to_pylist()
        for row in extract_video_frames(video, frames_root, count, quality)
    ]
    return _split_rows(rows)


def extract_frames(
    videos: pa.Table, frames_root: str, count: int = 1, quality: int = 95, tasks: int = 0
) -> tuple[pa.Table, pa.Table]:
    """Decode every clip of ``videos`` (id, path, label, split) in Ray Data tasks.

    Returns (frame rows: id, path, label, split, video, frame; error rows: id, path, reason).
    ``tasks``: how many blocks (one task each) the listing is cut into; 0: about 20 clips a
    block, but at least 16 blocks (or one per clip) so small listings spread over the CPUs too,
    and at most 256.
    """
    import ray

    listing = videos.select(list(VIDEO_COLUMNS)).to_pylist()
    if not listing:
        return _split_rows([])
    blocks = tasks or min(256, max(16, len(listing) // 20))
    dataset = ray.data.from_items(listing, override_num_blocks=min(blocks, len(listing)))
    dataset = dataset.flat_map(
        extract_video_frames,
        fn_kwargs={"frames_root": frames_root, "count": count, "quality": quality},
        num_cpus=1,
    )
    return _split_rows(dataset.take_all())
