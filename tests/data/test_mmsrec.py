"""The MMSRec layout: the real amazon-toys-mm folder, and small hand-made folders with missing files and bad lines."""

import json
import shutil
from pathlib import Path

import pytest

from mp4sr.data import VectorFiles, list_datasets, load_dataset
from mp4sr.data.loader import detect_format
from mp4sr.data.readers import parse_mmsrec_text, read_mmsrec
from mp4sr.errors import DataError

WRITTEN = "./dataset/amazon/preprocess/../processed/Toys"  # how the producing repository wrote its paths


def test_real_toys_folder(shared_data):
    toys = shared_data / "amazon-toys-mm"
    assert detect_format(toys) == "mmsrec"
    assert "amazon-toys-mm" in {name for name, _, _ in list_datasets()}
    d = load_dataset(toys)
    assert (d.n_users, d.n_items, d.n_interactions) == (19412, 11924, 167597)
    first = json.loads((toys / "test_seq.jsonl").read_text().splitlines()[0])
    assert [str(i) for i in d.items.ids[d.sequences[0]]] == first
    assert sum(p is not None for p in d.items.image_paths) == 3000  # photos shipped for 3,000 items
    assert len(d.extras["text_vectors"].files) == 11924 and len(d.extras["image_vectors"].files) == 11907
    assert all(f.is_file() for f in list(d.extras["image_vectors"].files.values())[:50])
    assert sum(bool(t) for t in d.items.fields["title"]) > 11800 and "&#x" not in " ".join(d.items.text[:500])


def test_text_fields_are_parsed():
    assert parse_mmsrec_text("Title: Toy; blue ; Description: a &amp; b ; ") == {"title": "Toy; blue", "description": "a & b"}
    assert parse_mmsrec_text("Asin: B000062SQK ; \nDescription: Plays games ; ") == {"description": "Plays games"}
    assert parse_mmsrec_text("just words") == {"text": "just words"}
    assert parse_mmsrec_text(" ; ") == {}


def _folder(tmp_path: Path, sequences: list, items: list[str], photos: set[str] = frozenset(), texts: set[str] | None = None,
            vectors: set[str] = frozenset()) -> Path:
    folder = tmp_path / "shop"
    for sub in ("texts", "visions", "text_features", "vision_features"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "test_seq.jsonl").write_text("".join(json.dumps(s) + "\n" if not isinstance(s, str) else s + "\n" for s in sequences))
    rows, feats = [], []
    for item in items:
        rows.append({"id": item, "vision": f"{WRITTEN}/visions/{item}.jpg", "audio": None, "text": f"{WRITTEN}/texts/{item}.txt"})
        feats.append({"id": item, "vision": f"{WRITTEN}/vision_features/{item}.pth" if item in vectors else None,
                      "audio": None, "text": f"{WRITTEN}/text_features/{item}.pth"})
        if texts is None or item in texts:
            (folder / "texts" / f"{item}.txt").write_text(f"Title: Name of {item} ; Description: About {item} ; ")
        if item in photos:
            (folder / "visions" / f"{item}.jpg").write_bytes(b"\xff\xd8 not really decoded here")
    (folder / "item.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "item_feature.jsonl").write_text("".join(json.dumps(r) + "\n" for r in feats))
    return folder


def test_missing_texts_photos_and_vector_files_are_absent_not_errors(tmp_path):
    folder = _folder(tmp_path, [["a", "b", "c"], ["c", "b"]], ["a", "b", "c"], photos={"b"}, texts={"a", "c"}, vectors={"a", "c"})
    d = read_mmsrec(folder)
    assert list(d.items.ids) == ["a", "b", "c"] and list(d.user_ids) == ["1", "2"]
    assert d.items.text == ["Name of a. About a", "", "Name of c. About c"]
    assert [p is not None for p in d.items.image_paths] == [False, True, False]
    image = d.extras["image_vectors"]
    assert isinstance(image, VectorFiles) and set(image.files) == {"a", "c"}  # b's vision is null
    assert image.files["a"] == folder / "vision_features" / "a.pth"  # resolved by file name inside the folder


@pytest.mark.parametrize("line, message", [
    ('["a", "b"', r"test_seq.jsonl, line 2: not valid JSON"),
    ('{"a": 1}', r"test_seq.jsonl, line 2: expected a non-empty JSON array of item ids"),
    ("[]", r"test_seq.jsonl, line 2: expected a non-empty JSON array"),
    ('["a", "zz"]', r"test_seq.jsonl, line 2: item id\(s\) \['zz'\] are not in item.jsonl"),
])
def test_bad_sequence_lines_name_the_file_and_line(tmp_path, line, message):
    folder = _folder(tmp_path, [["a", "b"], line], ["a", "b"])
    with pytest.raises(DataError, match=message):
        read_mmsrec(folder)


def test_bad_item_lines_name_the_file_and_line(tmp_path):
    folder = _folder(tmp_path, [["a", "b"]], ["a", "b"])
    lines = (folder / "item.jsonl").read_text().splitlines()
    (folder / "item.jsonl").write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"item.jsonl, line 2: item 'a' appears twice"):
        read_mmsrec(folder)
    (folder / "item.jsonl").write_text(lines[0] + '\n{"vision": null}\n')
    with pytest.raises(DataError, match=r"item.jsonl, line 2: expected an object"):
        read_mmsrec(folder)


def test_cli_datasets_lists_the_layout(tmp_path, monkeypatch):
    folder = _folder(tmp_path, [["a", "b", "c"]], ["a", "b", "c"])
    shutil.rmtree(folder / "visions")
    monkeypatch.setenv("MP4SR_DATA_DIR", str(tmp_path))
    found = {name: fmt for name, _, fmt in list_datasets()}
    assert found["shop"] == "mmsrec"
