"""Multi-label demo set: deterministic, 1-3 labels per image, unseen labels in every split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.manifest import read_manifest
from core.data.multilabel_demo import LABELS, generate_multilabel_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_multilabel_demo(str(tmp_path_factory.mktemp("ml-demo")), num_images=120)


def test_manifest_labels_and_splits(demo):
    table = read_manifest(demo.manifest)
    assert len(table) == 120
    assert {"id", "path", "labels", "split", "description"} <= set(table.column_names)
    rows = table.to_pylist()
    assert all(1 <= len(r["labels"]) <= 3 for r in rows)
    assert all(len(set(r["labels"])) == len(r["labels"]) for r in rows)
    assert {x for r in rows for x in r["labels"]} == set(LABELS)
    assert len(demo.seen) == 9 and len(demo.unseen) == 3
    unseen = set(demo.unseen)
    for split in ("train", "val", "test"):
        in_split = [r for r in rows if r["split"] == split]
        assert any(unseen & set(r["labels"]) for r in in_split), split
    assert all(Path(r["path"]).is_file() for r in rows[:5])
    saved = json.loads(Path(demo.labels_json).read_text())
    assert saved["seen"] == list(demo.seen) and saved["unseen"] == list(demo.unseen)
    assert saved["all"] == list(demo.seen) + list(demo.unseen)
    assert Path(demo.labels_json).parent == Path(demo.manifest).parent


def test_deterministic(tmp_path, demo):
    again = generate_multilabel_demo(str(tmp_path), num_images=120)
    first = read_manifest(demo.manifest).to_pylist()
    second = read_manifest(again.manifest).to_pylist()
    assert [(r["id"], r["labels"], r["split"]) for r in first] == [
        (r["id"], r["labels"], r["split"]) for r in second
    ]
    for r1, r2 in list(zip(first, second, strict=True))[:10]:
        assert Path(r1["path"]).read_bytes() == Path(r2["path"]).read_bytes()


def test_bad_unseen_and_too_few_images(tmp_path):
    with pytest.raises(ValueError, match="unseen"):
        generate_multilabel_demo(str(tmp_path / "a"), num_images=10, unseen=("unicorn",))
    with pytest.raises(ValueError, match="no image with an unseen label"):
        generate_multilabel_demo(str(tmp_path / "b"), num_images=2)
