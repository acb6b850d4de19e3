"""NUS-WIDE reader: label lists (shipped files) and a tiny fake dataset in the real layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from core.data.manifest import ManifestError, read_manifest
from core.data.nus_wide import (
    LabelSplit,
    load_label_split,
    nus_wide_manifest,
    write_nus_wide_manifest,
)

SHIPPED = Path(__file__).resolve().parents[2] / "shared" / "data" / "nus-wide"

# A fake label vocabulary of the real sizes: 1000 tags, 81 concepts of which 75 are tags.
TAGS = [f"tag{i:03d}" for i in range(994)] + ["sky", "dog", "cat", "car", "road", "tree"]
CONCEPTS = ["sky", "dog", "cat", "car", "road", "tree"] + [f"tag{i:03d}" for i in range(69)]
CONCEPTS += ["computer", "fire", "map", "swimmers", "tattoo", "whales"]


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="benchmark label files not available")
def test_shipped_label_lists_give_925_seen_81_unseen():
    split = load_label_split(str(SHIPPED))
    assert len(split.seen) == 925 and len(split.unseen) == 81 and len(split.all) == 1006
    tags = [t.strip() for t in (SHIPPED / "TagList1k.txt").read_text().splitlines() if t.strip()]
    assert set(split.seen) == set(tags) - set(split.unseen)
    assert {"computer", "fire", "map", "swimmers", "tattoo", "whales"} == set(split.unseen) - set(
        tags
    )
    assert not any(x.endswith("\r") for x in split.all)  # the files have CRLF line ends


def _matrix_text(rows: np.ndarray) -> str:
    return "".join("\t".join(str(int(v)) for v in row) + "\t\r\n" for row in rows)


def _fake_nus_wide(root: Path, whole_dataset_tags: bool = False) -> dict:
    """Train: 4 images, test: 3 images; tags/concepts set on a few known entries."""
    (root / "NUS_WID_Tags").mkdir(parents=True)
    (root / "ImageList").mkdir()
    gt = root / "Groundtruth" / "TrainTestLabels"
    gt.mkdir(parents=True)
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\r\n".join(TAGS) + "\r\n")
    (root / "Concepts81.txt").write_text("\r\n".join(CONCEPTS) + "\r\n")
    train = ["actor\\0001_1.jpg", "actor\\0002_2.jpg", "beach\\0003_3.jpg", "beach\\0004_4.jpg"]
    test = ["C:\\ImageData\\Flickr\\zoo\\0005_5.jpg", "zoo\\0006_6.jpg", "zoo\\0007_7.jpg"]
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(train) + "\r\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("\r\n".join(test) + "\r\n")
    tr = np.zeros((4, 1000), dtype=int)
    te = np.zeros((3, 1000), dtype=int)
    tr[0, TAGS.index("tag900")] = 1  # seen tag
    tr[0, TAGS.index("sky")] = 1  # a tag that is a concept: not a seen label
    tr[1, TAGS.index("tag950")] = 1
    tr[2, TAGS.index("dog")] = 1  # only a concept tag: no seen label -> dropped from train
    te[0, TAGS.index("tag900")] = 1
    te[1, TAGS.index("tag993")] = 1
    if whole_dataset_tags:
        (root / "ImageList" / "Imagelist.txt").write_text(
            "\r\n".join(["C:\\ImageData\\Flickr\\" + x for x in test + train]) + "\r\n"
        )
        (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text(_matrix_text(np.vstack([te, tr])))
    else:
        (root / "NUS_WID_Tags" / "Train_Tags1k.dat").write_text(_matrix_text(tr))
        (root / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text(_matrix_text(te))
    for concept in CONCEPTS:
        train_col = [1 if (concept == "sky" and i == 1) else 0 for i in range(4)]
        test_col = [1 if (concept, i) in {("whales", 0), ("sky", 2)} else 0 for i in range(3)]
        (gt / f"Labels_{concept}_Train.txt").write_text("\n".join(map(str, train_col)) + "\n")
        (gt / f"Labels_{concept}_Test.txt").write_text("\n".join(map(str, test_col)) + "\n")
    return {"train": train, "test": test}


def _rows(table):
    return {r["id"]: (r["split"], r["labels"]) for r in table.to_pylist()}


@pytest.mark.parametrize("whole", [False, True])
def test_fake_nus_wide_manifest(tmp_path, whole):
    _fake_nus_wide(tmp_path, whole_dataset_tags=whole)
    table, labels = nus_wide_manifest(str(tmp_path))
    assert len(labels.seen) == 925 and len(labels.unseen) == 81 and len(labels.all) == 1006
    rows = _rows(table)
    assert rows == {
        "actor/0001_1.jpg": ("train", ["tag900"]),  # 'sky' tag dropped: train sees no unseen
        "actor/0002_2.jpg": ("train", ["tag950"]),
        "zoo/0005_5.jpg": ("test", ["tag900", "whales"]),
        "zoo/0006_6.jpg": ("test", ["tag993"]),
        "zoo/0007_7.jpg": ("test", ["sky"]),  # unseen from the concept ground truth
    }
    path = {r["id"]: r["path"] for r in table.to_pylist()}["zoo/0005_5.jpg"]
    assert Path(path) == tmp_path / "Flickr" / "zoo" / "0005_5.jpg"


def test_options_and_written_files(tmp_path):
    _fake_nus_wide(tmp_path / "nus")
    table, _ = nus_wide_manifest(str(tmp_path / "nus"), train_unseen_labels=True)
    assert _rows(table)["actor/0002_2.jpg"] == ("train", ["tag950", "sky"])
    table, _ = nus_wide_manifest(str(tmp_path / "nus"), drop_unlabelled=False)
    assert len(table) == 7
    dest, labels_json = write_nus_wide_manifest(
        str(tmp_path / "nus"), str(tmp_path / "out" / "manifest.parquet"), val_fraction=0.5
    )
    manifest = read_manifest(dest)
    assert set(manifest.column("split").to_pylist()) <= {"train", "val", "test"}
    assert manifest.schema.field("labels").type.value_type == "string"
    split = LabelSplit.load(labels_json)
    assert len(split.all) == 1006 and split.unseen_idx[0] == 925
    assert split.indices(["whales"]) == [1005]


def test_manifest_job_writes_what_the_reader_reads(tmp_path, capsys):
    from ray_jobs.nus_wide_manifest import main

    _fake_nus_wide(tmp_path / "nus")
    out = tmp_path / "out" / "manifest.parquet"
    manifest, labels_json = main([f"root={tmp_path / 'nus'}", f"output={out}"])
    expected, _ = nus_wide_manifest(str(tmp_path / "nus"))
    assert manifest == str(out) and _rows(read_manifest(manifest)) == _rows(expected)
    assert Path(labels_json) == out.parent / "labels.json"
    splits = expected.column("split").to_pylist()  # 1 train image has no seen label: dropped
    assert (splits.count("train"), splits.count("test")) == (2, 3)
    assert "(test 3, train 2)" in capsys.readouterr().out


def test_missing_and_malformed_files_are_named(tmp_path):
    _fake_nus_wide(tmp_path)
    whales = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_whales_Test.txt"
    whales.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("Labels_whales_Test.txt")):
        nus_wide_manifest(str(tmp_path))
    whales.write_text("0\n1\n")
    with pytest.raises(ManifestError, match=re.escape("Labels_whales_Test.txt: 2 lines")):
        nus_wide_manifest(str(tmp_path))
    whales.write_text("0\n1\n0\n")
    (tmp_path / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text("0 2 1\n")
    with pytest.raises(ManifestError, match=re.escape("Test_Tags1k.dat: line 1 has a value")):
        nus_wide_manifest(str(tmp_path))
    (tmp_path / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text("0 1 1\n")
    with pytest.raises(ManifestError, match=re.escape("line 1 has 3 values, expected 1000")):
        nus_wide_manifest(str(tmp_path))
    (tmp_path / "NUS_WID_Tags" / "Test_Tags1k.dat").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("Test_Tags1k.dat nor NUS_WID_Tags/")):
        nus_wide_manifest(str(tmp_path))
    (tmp_path / "Concepts81.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("Concepts81.txt")):
        load_label_split(str(tmp_path))
