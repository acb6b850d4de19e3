"""Manifests from image folders and tables, the demo dataset, and robust image decoding."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.data.demo import CLASSES, generate_demo_dataset
from core.data.images import ImageLoadError, decode_image, load_image
from core.data.manifest import (
    ManifestError,
    assign_split,
    manifest_from_image_folder,
    manifest_from_table,
    read_manifest,
    write_manifest,
)


def _png(path: Path, colour=(10, 20, 30), size=(8, 6), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_image_folder_manifest(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    table = manifest_from_image_folder(str(tmp_path))
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert all(r["label"] == r["id"].split("/")[0] for r in rows)
    assert all(Path(r["path"]).is_file() for r in rows)
    # Splits follow a hash of the id, so they are stable and computable by hand.
    for r in rows:
        bucket = int(hashlib.sha1(r["id"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        expected = "train" if bucket < 0.6 else "val" if bucket < 0.8 else "test"
        assert r["split"] == expected


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "cat" / "a.png")
    _png(tmp_path / "test" / "dog" / "b.png")
    rows = manifest_from_image_folder(str(tmp_path)).to_pylist()
    assert [(r["id"], r["label"], r["split"]) for r in rows] == [
        ("test/dog/b.png", "dog", "test"),
        ("train/cat/a.png", "cat", "train"),
    ]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a folder"):
        manifest_from_image_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no images found"):
        manifest_from_image_folder(str(tmp_path / "empty"))
    _png(tmp_path / "flat" / "loose.png")
    with pytest.raises(ManifestError, match=r"loose\.png is not inside a class folder"):
        manifest_from_image_folder(str(tmp_path / "flat"))


def test_csv_single_and_multi_label(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    csv = tmp_path / "list.csv"
    csv.write_text(
        "file,cls,tags,part,description\nimgs/a.png,cat,sky|grass,train,a cat\n"
        "imgs/b.png,dog,,test,a dog\n"
    )
    table = manifest_from_table(
        str(csv), path_column="file", label_column="cls", labels_column="tags", split_column="part"
    )
    rows = table.to_pylist()
    assert rows[0] == {
        "id": "imgs/a.png",
        "path": str(tmp_path / "imgs" / "a.png"),
        "label": "cat",
        "labels": ["sky", "grass"],
        "split": "train",
        "description": "a cat",
    }
    assert rows[1]["labels"] == [] and rows[1]["split"] == "test"


def test_parquet_source_with_list_labels(tmp_path: Path) -> None:
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"path": ["/data/x.jpg"], "labels": [["a", "b"]]}), src)
    rows = manifest_from_table(str(src), label_column=None, labels_column="labels").to_pylist()
    assert rows[0]["id"] == "data/x.jpg" and rows[0]["labels"] == ["a", "b"]
    assert rows[0]["split"] == assign_split("data/x.jpg", (0.6, 0.2, 0.2))


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("path,label\na.png,cat\n", {"label_column": "cls"}, "no column 'cls' (label_column)"),
        ("path,label\na.png,cat\na.png,dog\n", {}, "'a.png' is listed more than once"),
        ("path,label\na.png,\n", {}, "row 0 has an empty 'label'"),
        (
            "path,label,split\na.png,cat,dev\n",
            {"split_column": "split"},
            "column 'split' has ['dev']",
        ),
    ],
)
def test_table_errors_name_file_and_field(tmp_path: Path, content, kwargs, message) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text(content)
    with pytest.raises(ManifestError) as info:
        manifest_from_table(str(csv), **kwargs)
    assert str(csv) in str(info.value) and message in str(info.value)


def test_read_manifest_checks_and_filters(tmp_path: Path) -> None:
    dest = str(tmp_path / "m.parquet")
    table = pa.table(
        {"id": ["a", "b"], "path": ["/a", "/b"], "label": ["x", "y"], "split": ["train", "test"]}
    )
    write_manifest(table, dest)
    assert read_manifest(dest, ["test"]).column("id").to_pylist() == ["b"]
    pq.write_table(table.drop_columns(["split"]), tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match=r"bad.parquet: missing column 'split'"):
        read_manifest(str(tmp_path / "bad.parquet"))
    with pytest.raises(ManifestError, match="splits"):
        read_manifest(dest, ["dev"])


def test_demo_dataset_is_deterministic_and_varied(tmp_path: Path) -> None:
    m1 = read_manifest(generate_demo_dataset(str(tmp_path / "a"), images_per_class=5, seed=3))
    m2 = read_manifest(generate_demo_dataset(str(tmp_path / "b"), images_per_class=5, seed=3))
    assert m1.num_rows == 5 * len(CLASSES) == 40
    assert sorted(set(m1.column("label").to_pylist())) == sorted(CLASSES)
    for p1, p2 in zip(m1.column("path").to_pylist(), m2.column("path").to_pylist(), strict=True):
        assert Path(p1).read_bytes() == Path(p2).read_bytes()
    assert m1.column("description").to_pylist() == m2.column("description").to_pylist()
    # Images of one class differ (colour, size, position, background, noise).
    circles = [
        np.asarray(Image.open(p))
        for p, lab in zip(
            m1.column("path").to_pylist(), m1.column("label").to_pylist(), strict=True
        )
        if lab == "circle"
    ]
    assert all(not np.array_equal(circles[0], c) for c in circles[1:])
    for text, label in zip(
        m1.column("description").to_pylist(), m1.column("label").to_pylist(), strict=True
    ):
        assert f" {label} " in text and "background" in text


def test_decode_converts_modes_to_rgb() -> None:
    gray = decode_image(_encode(Image.new("L", (10, 5), 128), "PNG"))
    assert gray.shape == (5, 10, 3) and (gray == 128).all()
    cmyk = decode_image(_encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (4, 4, 3) and cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60
    clear = decode_image(_encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert (clear == 255).all()  # fully transparent → white background
    opaque = decode_image(_encode(Image.new("RGBA", (4, 4), (255, 0, 0, 255)), "PNG"))
    assert (opaque[..., 0] == 255).all() and (opaque[..., 1] == 0).all()
    big = decode_image(_encode(Image.new("RGB", (3000, 1500)), "JPEG"), max_side=600)
    assert big.shape == (300, 600, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"definitely not an image", "not a recognised image format"),
        (_encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:120], "corrupt or truncated"),
        (_encode(Image.new("RGB", (2000, 2000)), "PNG"), "too large: 2000x2000"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageLoadError, match=message):
        decode_image(data, max_pixels=1_000_000)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(str(tmp_path / "nope.png"))


def test_null_labels_are_errors_naming_column_count_and_ids(tmp_path: Path) -> None:
    """A null label would otherwise become a class called 'None' in training."""
    base = {"id": ["a", "b", "c", "d"], "path": ["/a", "/b", "/c", "/d"], "split": ["train"] * 4}
    single = pa.table({**base, "label": ["x", None, "y", " "]})
    pq.write_table(single, tmp_path / "single.parquet")
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path / "single.parquet"))
    message = str(info.value)
    assert "single.parquet" in message and "column 'label'" in message
    assert "2 null or empty value(s)" in message and "'b', 'd'" in message and "'a'" not in message

    labels = pa.array([["x"], None, ["y", None], []], type=pa.list_(pa.string()))
    pq.write_table(pa.table({**base, "labels": labels}), tmp_path / "multi.parquet")
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path / "multi.parquet"))
    message = str(info.value)
    assert "multi.parquet" in message and "column 'labels'" in message
    assert "2 row(s)" in message and "'b', 'c'" in message and "'d'" not in message  # [] is fine

    for column in ("id", "path"):
        values = list(base[column])
        values[2] = None
        table = pa.table({**base, column: values, "label": ["x"] * 4})
        with pytest.raises(ManifestError, match=rf"m.parquet: column '{column}' has 1 null"):
            write_manifest(table, str(tmp_path / "m.parquet"))
    many = pa.table({**base, "label": [None] * 4})
    with pytest.raises(
        ManifestError, match=r"4 null or empty value\(s\) \(ids 'a', 'b', 'c', 'd'\)"
    ):
        write_manifest(many, str(tmp_path / "m.parquet"))


def test_null_labels_in_a_source_table_are_not_turned_into_text(tmp_path: Path) -> None:
    src = tmp_path / "src.parquet"
    labels = pa.array([["a", None], ["b"]], type=pa.list_(pa.string()))
    pq.write_table(pa.table({"path": ["/x.jpg", "/y.jpg"], "labels": labels}), src)
    with pytest.raises(ManifestError, match=r"column 'labels' has 1 row\(s\).*'x.jpg'"):
        manifest_from_table(str(src), label_column=None, labels_column="labels")
