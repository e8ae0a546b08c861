"""What a run trains on: several datasets joined (pre-training on several domains) and a source without
the target's users, followed by fine-tuning on the target."""

import torch

from mp4sr.config import RunConfig, build_config
from mp4sr.serve.recommender import Recommender
from mp4sr.data import training_data
from mp4sr.train.run import train_run

TINY = {"hidden": 16, "ffn": 32, "modalities": ["image"]}


def _config(**tree) -> RunConfig:
    base = {"model": "mp4sr", "features": {"text": None},
            "train": {"epochs": 1, "batch_size": 1024, "progress": False, "threads": 1}}
    return build_config(RunConfig, base={**base, **tree})


def test_a_source_without_the_targets_users():
    config = _config(dataset="amazon-scientific", data={"exclude_users_of": ["amazon-scientific-mm"]})
    dataset, parts = training_data(config.dataset, config.data)
    assert dataset.n_users == 8442 - 2928 and dataset.n_items == 4385 and parts == [dataset]


def test_pretraining_on_joined_datasets_then_fine_tuning_on_one_of_them(tmp_path):
    pre = _config(dataset="amazon-scientific-mm", data={"join_datasets": ["amazon-scientific"]},
                  params={**TINY, "stage": "pretrain"})
    out = train_run(pre, tmp_path / "pre")
    assert out.dataset.name == "amazon-scientific-mm+amazon-scientific"
    assert out.dataset.n_items == 1585 + 4385 and out.dataset.n_users == 2928 + 8442
    ckpt = torch.load(tmp_path / "pre" / "best.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["item_ids"]) == 5970
    assert ckpt["item_ids"][0].startswith("amazon-scientific-mm/") and ckpt["item_ids"][-1].startswith("amazon-scientific/")
    image = ckpt["features"]["image"]
    assert image["mode"] == "joined" and image["shape"] == [5970, 1, 512]
    # the checkpoint serves: the recommender rebuilds the joined data and its joined vectors
    served = Recommender.load(tmp_path / "pre")
    assert served.n_items == 5970 and served.dataset.name == out.dataset.name
    history = [ckpt["item_ids"][0], ckpt["item_ids"][-1]]
    top = served.recommend(history, k=5)
    assert len(top) == 5 and not set(history) & {item for item, _ in top}
    fine = _config(dataset="amazon-scientific-mm", init_from=str(tmp_path / "pre"), params={**TINY, "stage": "finetune"})
    fine.train.epochs = 0  # the fine-tuning model as it starts: the joined pre-training's encoder
    tuned = train_run(fine, tmp_path / "fine")
    assert tuned.dataset.n_items == 1585
    state = tuned.model.state_dict()
    shared = [k for k in ckpt["state_dict"] if k in state]
    assert len(shared) == len(ckpt["state_dict"]) and "id_embedding.weight" in set(state) - set(shared)
    for name in shared:
        assert torch.equal(state[name], ckpt["state_dict"][name]), name


def test_fine_tuning_keeps_the_modalities_its_pre_training_chose(tmp_path):
    """Pre-trained on text alone, a fine-tuning whose settings name no modalities stays on text (the data
    has images too), records it, and serves it; without pre-training it reads what the data has."""
    small = {"hidden": 16, "ffn": 32}
    pre = _config(dataset="amazon-scientific-mm", features={}, params={**small, "stage": "pretrain", "modalities": ["text"]})
    train_run(pre, tmp_path / "pre")
    fine = _config(dataset="amazon-scientific-mm", features={}, init_from=str(tmp_path / "pre"), params=small)
    tuned = train_run(fine, tmp_path / "fine")
    assert tuned.model.modalities == ["text"] and tuned.params()["modalities"] == ["text"]
    ckpt = torch.load(tmp_path / "fine" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["data_settings"] == {"modalities": ["text"]} and "modalities" not in ckpt["config"]["params"]
    served = Recommender.load(tmp_path / "fine")
    assert served.modalities == ["text"] and len(served.recommend([ckpt["item_ids"][0]], k=3)) == 3
    fine.init_from, fine.train.epochs = None, 0
    assert train_run(fine, tmp_path / "scratch").model.modalities == ["text", "image"]


def test_a_fine_tuning_whose_data_lacks_a_pretrained_modality_says_where_it_came_from(tmp_path, scientific_mm_with):
    import pytest

    from mp4sr.errors import ConfigError

    pre = _config(dataset="amazon-scientific-mm", features={}, params={"hidden": 16, "ffn": 32, "stage": "pretrain"})
    pre.train.epochs = 0
    train_run(pre, tmp_path / "pre")  # on text and images
    text_only = scientific_mm_with("scientific-text", (".text", ".feat1CLS"))
    fine = _config(dataset=str(text_only), features={}, init_from=str(tmp_path / "pre"), params={"hidden": 16, "ffn": 32})
    with pytest.raises(ConfigError, match=r"asks for image, and dataset 'scientific-text' has no image features .*"
                                          r"Here params.modalities came from the pre-trained checkpoint"):
        train_run(fine, tmp_path / "fine")
