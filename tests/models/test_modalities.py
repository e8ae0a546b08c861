"""The modalities of content models follow the data: text only, images only, both, or neither (an
error that names the models that still train)."""

import logging

import pandas as pd
import pytest
import torch

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.data.readers import from_interactions
from mp4sr.errors import ConfigError
from mp4sr.models import REGISTRY, ModelContext, build_model
from mp4sr.models.base import reads_content
from mp4sr.models.items import ItemTable

N_ITEMS = 20
CONTENT_MODELS = sorted(name for name, cls in REGISTRY.items() if reads_content(cls))
TEXT_ONLY = {"unisrec"}  # models that read item text and nothing else
SMALL = {"hidden": 16, "ffn": 32, "layers": 1}


@pytest.fixture(scope="module")
def shop():
    """A real (tiny) Dataset, so that messages name it."""
    log = pd.DataFrame({"user_id": [u for u in "abcd" for _ in range(5)],
                        "item_id": [str((3 * n) % N_ITEMS) for n in range(20)]})
    return from_interactions(log, "shop", user_core=1)


def _tables(*modalities):
    g = torch.Generator().manual_seed(0)
    dims = {"text": 12, "image": 8}
    return {m: ItemTable(torch.randn(N_ITEMS, 2, dims[m], generator=g), torch.ones(N_ITEMS, 2, dtype=torch.bool))
            for m in modalities}


def _build(name, shop, present, **params):
    context = ModelContext(N_ITEMS, max_len=8, features=_tables(*present), dataset=shop.name)
    torch.manual_seed(0)
    return build_model(name, {**SMALL, **params}, context)


def _batch():
    tokens = torch.tensor([[1, 2, 3], [4, 5, 0]])
    targets = torch.where(tokens > 0, tokens % N_ITEMS, torch.full_like(tokens, IGNORE))
    return SequenceBatch(tokens, torch.tensor([3, 2]), torch.arange(2), targets=targets)


@pytest.mark.parametrize("name", CONTENT_MODELS)
@pytest.mark.parametrize("present", [("text",), ("image",), ("text", "image")])
def test_unset_modalities_are_those_the_data_has(name, present, shop, caplog):
    if name in TEXT_ONLY and "text" not in present:
        with pytest.raises(ConfigError, match=rf"{name} reads item text features, and dataset 'shop' has none "
                                              r"\(it has image features only\)"):
            _build(name, shop, present)
        return
    with caplog.at_level(logging.INFO, logger="mp4sr.models"):
        model = _build(name, shop, present)
    readable = ("text",) if name in TEXT_ONLY else ("text", "image")
    chosen = [m for m in readable if m in present]
    assert model.data_settings() == {"modalities": chosen}
    said = [r.getMessage() for r in caplog.records if "features:" in r.getMessage()]
    if chosen == list(readable):
        assert said == []
    else:
        absent = next(m for m in readable if m not in present)
        assert said == [f"dataset 'shop' has no {absent} features: {name} runs on {chosen[0]} only"]
    for stage in ("pretrain", "finetune") if "stage" in model.Config.model_fields else ("finetune",):
        model = _build(name, shop, present, **({"stage": stage} if stage == "pretrain" else {}))
        loss = model.calculate_loss(_batch())
        loss.backward()
        assert torch.isfinite(loss)
        assert model.eval().full_sort_predict(_batch()).shape == (2, N_ITEMS)


@pytest.mark.parametrize("name", CONTENT_MODELS)
def test_neither_text_nor_images_names_the_models_that_still_train(name, shop):
    id_only = sorted(n for n, cls in REGISTRY.items() if not reads_content(cls))
    assert "sasrec" in id_only and "mp4sr" not in id_only
    with pytest.raises(ConfigError, match="it has neither item text nor images") as error:
        _build(name, shop, ())
    assert f"can train on it: {', '.join(id_only)} (`mp4sr train --model NAME`)" in str(error.value)


@pytest.mark.parametrize("name", sorted(set(CONTENT_MODELS) - TEXT_ONLY))
def test_a_modality_the_data_lacks_is_a_clear_error(name, shop):
    with pytest.raises(ConfigError, match=rf"{name}: params.modalities asks for image, and dataset 'shop' has no "
                                          r"image features \(it has text features only\): leave params.modalities unset"):
        _build(name, shop, ("text",), modalities=["image"])
    model = _build(name, shop, ("text", "image"), modalities=["image", "image"])  # what it names, once
    assert model.data_settings() == {"modalities": ["image"]}
    with pytest.raises(ConfigError, match="at least one modality"):
        _build(name, shop, ("text", "image"), modalities=[])


def test_one_modality_pretrains_without_mixup_or_contrast(shop):
    """With text alone, MP4SR's pre-training loss is text next-item prediction and nothing else."""
    both, text = _build("mp4sr", shop, ("text", "image"), stage="pretrain"), _build("mp4sr", shop, ("text",), stage="pretrain")
    only_nip = _build("mp4sr", shop, ("text",), stage="pretrain", cmcl=False, mixup=False)
    assert set(text.item_encoders) == {"text"} and set(both.item_encoders) == {"text", "image"}
    torch.manual_seed(1)
    a = text.train().calculate_loss(_batch())  # item dropout and dropout draw the same numbers in both
    torch.manual_seed(1)
    b = only_nip.train().calculate_loss(_batch())
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item())
