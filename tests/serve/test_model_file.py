"""Exported models (`mp4sr export-model`): served with no dataset, no feature cache and no training code,
with the same recommendations as the run folder they came from."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mp4sr.errors import ConfigError, DataError
from mp4sr.paths import CACHE_ENV, DATA_ENV
from mp4sr.serve import Recommender
from mp4sr.serve.model_file import MODEL_FILE
from mp4sr.serve.packaging import export_model

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """{name: exported model folder} of the content model and of an ID-only model."""
    out = {}
    for name in ("mp4sr", "sasrec"):
        out[name] = tmp_path_factory.mktemp(f"model-{name}")
        export_model(checkpoints[name], out[name])
    return out


@pytest.fixture
def nothing_else(tmp_path, monkeypatch):
    """An empty data folder and feature cache, a working folder without ./data or ../shared/data, and
    dataset readers and feature stores that fail if anything calls them."""
    for env, name in ((DATA_ENV, "data"), (CACHE_ENV, "cache")):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(env, str(tmp_path / name))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    def forbidden(*args, **kwargs):
        raise AssertionError("an exported model must not read a dataset or a feature store")

    import mp4sr.data.loader
    import mp4sr.features
    import mp4sr.serve.recommender

    for module, name in ((mp4sr.data.loader, "load_dataset"), (mp4sr.serve.recommender, "load_dataset"),
                         (mp4sr.data.loader, "find_dataset"), (mp4sr.features, "feature_stores")):
        monkeypatch.setattr(module, name, forbidden)
    return tmp_path


@pytest.fixture(scope="module")
def from_run_folders(checkpoints, scientific_mm, tmp_path_factory) -> dict[str, tuple[str, pd.DataFrame]]:
    """{name: (`mp4sr recommend --json` output, `mp4sr export` table)} served from the run folder."""
    from mp4sr.serve.commands import export_command, recommend_command

    out = {}
    for name in ("mp4sr", "sasrec"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            recommend_command(checkpoints[name], _histories(scientific_mm)[0], k=10, as_json=True)
        top = export_command(checkpoints[name], tmp_path_factory.mktemp("top") / "top.parquet", k=5,
                             echo=lambda line: None)
        out[name] = printed.getvalue(), pd.read_parquet(top)
    return out


def _histories(data) -> list[list[str]]:
    """Real users' histories (their sequence without its last item)."""
    ids = data.items.ids
    return [[str(ids[i]) for i in data.sequences[u][:-1]] for u in (0, 7, 1234, 2900)]


def _copied(folder: Path, where: Path) -> Path:
    shutil.copytree(folder, where / "shipped")
    return where / "shipped"


@pytest.mark.parametrize("name", ["mp4sr", "sasrec"])
def test_exported_model_serves_the_same_json_as_its_run_folder(name, exported, clients, from_run_folders, scientific_mm,
                                                               nothing_else, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from mp4sr.serve.app import create_app
    from mp4sr.serve.commands import export_command, recommend_command

    ids = scientific_mm.items.ids
    histories = _histories(scientific_mm)
    requests = [{"histories": histories, "k": 10}, {"history": histories[2], "k": 20, "exclude_seen": False},
                {"history": [], "k": 5}, {"history": histories[1], "k": 10, "candidates": [str(i) for i in ids[:300]]}]
    shipped = _copied(exported[name], tmp_path)
    with TestClient(create_app(Recommender.load(shipped))) as client:
        for body in requests:
            here, there = client.post("/recommend", json=body), clients[name].post("/recommend", json=body)
            assert here.status_code == there.status_code == 200
            assert here.content == there.content  # byte for byte
        assert client.get("/health").content == clients[name].get("/health").content

    printed, table = from_run_folders[name]
    recommend_command(shipped, histories[0], k=10, as_json=True)
    assert capsys.readouterr().out == printed
    top = export_command(shipped, tmp_path / "top.parquet", k=5, echo=lambda line: None)
    pd.testing.assert_frame_equal(pd.read_parquet(top), table)


def test_model_folder_holds_a_weights_only_file_and_its_card(exported, checkpoints, scientific_mm):
    folder = exported["mp4sr"]
    payload = torch.load(folder / MODEL_FILE, weights_only=True)
    content = payload["item_content"]
    assert set(content) == {"text", "image"}
    assert content["text"]["vectors"].dtype == torch.float16 and content["text"]["vectors"].shape == (1585, 1, 512)
    assert content["image"]["manifest"]["mode"] == "imported"
    assert payload["popularity"].sum() > 0 and len(payload["item_ids"]) == scientific_mm.n_items
    assert payload["users"]["offsets"][-1] == scientific_mm.n_interactions

    card = json.loads((folder / "model_card.json").read_text())
    metrics = json.loads((checkpoints["mp4sr"] / "metrics.json").read_text())
    assert card["metrics"]["test"] == metrics["test"]
    assert card["data"] == {"dataset": "amazon-scientific-mm", "users": 2928, "items": 1585, "interactions": 19712,
                            "added_items": 0}
    assert card["settings"]["params"]["id_embedding"] is False and card["files"][MODEL_FILE] > 0
    readme = (folder / "README.md").read_text()
    assert f"| ndcg@10 | {metrics['test']['ndcg@10']:.4f} |" in readme and "amazon-scientific-mm" in readme


def test_model_file_of_another_format_is_refused(exported, tmp_path):
    payload = torch.load(exported["sasrec"] / MODEL_FILE, weights_only=True)
    torch.save({**payload, "format": 2, "mp4sr_version": "9.0"}, tmp_path / MODEL_FILE)
    with pytest.raises(DataError, match=r"exported in format 2 \(by mp4sr 9.0\).*reads format 1.*export-model"):
        Recommender.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_damaged_model_file_is_a_clear_error(damage, exported, tmp_path):
    data = bytearray((exported["mp4sr"] / MODEL_FILE).read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # inside the tensors' bytes, where torch's zip reader checks nothing
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    (tmp_path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged") as error:
        Recommender.load(tmp_path)
    assert str(tmp_path / MODEL_FILE) in str(error.value)


def test_an_mp4sr_run_folder_is_pointed_to_its_finetune_folder(checkpoints, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "finetune").symlink_to(checkpoints["sasrec"])
    with pytest.raises(ConfigError, match="an `mp4sr run` folder: give its finetune/ folder"):
        export_model(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_new_items_in_an_exported_model_are_saved_and_restored(exported, nothing_else, tmp_path):
    rec = Recommender.load(_copied(exported["mp4sr"], tmp_path))
    with pytest.raises(DataError, match="text vectors were imported from .*feat1CLS.*encoder is not available"):
        rec.add_items([{"id": "NEW-1", "text": "a digital caliper"}])
    existing = rec.item_ids[5]
    vectors = {f"{m}_vector": rec.model.tables[m].vectors[5, 0].tolist() for m in rec.modalities}
    rec.add_items([{"id": "NEW-1", **vectors}])
    history = [str(i) for i in rec.item_ids[:3]]
    scores = dict(rec.recommend(history, k=rec.n_items))
    assert scores["NEW-1"] == pytest.approx(scores[existing])  # inductive: the same content scores the same

    saved = rec.save(tmp_path / "extended")
    assert saved.name == MODEL_FILE
    again = Recommender.load(tmp_path / "extended")
    assert again.n_added == 1 and again.recommend(history, k=10) == rec.recommend(history, k=10)


def test_serving_an_exported_model_imports_no_training_code(exported, nothing_else):
    script = (
        "import sys\n"
        "import mp4sr.serve.app, mp4sr.serve.commands, mp4sr.serve.export, mp4sr.serve.recommender\n"
        "from mp4sr.serve import Recommender\n"
        f"rec = Recommender.load({str(exported['mp4sr'])!r})\n"
        "assert rec.recommend(list(rec.item_ids[:3]), k=3)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mp4sr.train', 'mp4sr.features'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def exported_shop(shop_recommender, tmp_path_factory) -> Path:
    from mp4sr.serve.commands import export_model_command

    out = tmp_path_factory.mktemp("model-shop")
    said: list[str] = []
    export_model_command(shop_recommender.folder, out, images=True, echo=said.append)
    assert said[-1] == f"copied 100 item photos into {out / 'images'}"
    return out


def test_exporting_photos_of_a_catalogue_without_any_says_so(checkpoints, tmp_path):
    from mp4sr.serve.commands import export_model_command

    said: list[str] = []
    export_model_command(checkpoints["sasrec"], tmp_path / "model", images=True, echo=said.append)
    assert "no photo files to copy" in said[-1] and not (tmp_path / "model" / "images").exists()


def test_an_exported_model_shows_its_titles_and_copied_photos(shop_recommender, exported_shop, nothing_else):
    """`export-model --images`: the page of a model shipped alone shows the same titles and the same photos."""
    from fastapi.testclient import TestClient

    from mp4sr.serve.app import create_app

    run = shop_recommender.item_display()
    with_photo = [i for i in range(len(run)) if run.image_file(i) is not None]
    shipped = Recommender.load(_copied(exported_shop, nothing_else))
    shown = shipped.item_display()
    assert shown.titles == run.titles and len(with_photo) == 100
    assert all(shown.image_file(i).parent == nothing_else / "shipped" / "images" for i in with_photo)
    client = TestClient(create_app(shipped))
    item = str(shipped.item_ids[with_photo[0]])
    answer = client.get(f"/items/{item}/image")
    assert answer.status_code == 200 and answer.content == run.image_file(with_photo[0]).read_bytes()
    no_photo = next(i for i in range(len(run)) if run.image_file(i) is None)
    assert client.get(f"/items/{shipped.item_ids[no_photo]}/image").status_code == 404


def test_a_run_folder_without_its_dataset_points_to_export_model(checkpoints, tmp_path, monkeypatch):
    import torch

    payload = torch.load(checkpoints["sasrec"] / "best.pt", map_location="cpu", weights_only=True)
    payload["config"]["dataset"] = "amazon-scientific-mm"  # by name, as users train: not here
    (tmp_path / "run").mkdir()
    torch.save(payload, tmp_path / "run" / "best.pt")
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path / "cwd")  # no ./data, no ../shared/data: a machine without the dataset
    with pytest.raises(DataError, match=r"dataset 'amazon-scientific-mm' not found.*mp4sr export-model --checkpoint"):
        Recommender.load(tmp_path / "run")


def test_serving_a_run_folder_imports_no_training_code(checkpoints, serve_cache):
    """From a run folder the data and feature stores are read again, with the data and feature layers."""
    script = (
        "import sys\n"
        "from mp4sr.serve import Recommender\n"
        f"rec = Recommender.load({str(checkpoints['mp4sr'])!r})\n"
        "assert rec.recommend(list(rec.item_ids[:3]), k=3)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mp4sr.train')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), CACHE_ENV: str(serve_cache)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
