"""The parts of item representations (models.items): each pooling and adaptor does what its name says,
every content model takes every choice, the ID part gives nothing to unknown items, and the default
settings keep the weights' names of older checkpoints."""

import pytest
import torch
from torch import nn

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.errors import ConfigError
from mp4sr.models import ModelContext, build_model
from mp4sr.models.base import ExtensibleCatalogue, Factorised, Pretrainable, SequentialRecommender
from mp4sr.models.items import (AttentionPooling, ContentConfig, ContentEncoder, ContentEncoders, IDEmbedding,
                                ItemTable, MeanPooling, MoEAdaptor, WhiteningAdaptor, make_adaptor, make_pooling)
from mp4sr.models.mp4sr import MP4SR
from mp4sr.models.unisrec import UniSRec, UniSRecConfig

N_ITEMS = 14
CONTENT_MODELS = ["mp4sr", "unisrec", "sasrecm", "fdsa"]
SMALL = {"hidden": 8, "ffn": 16, "layers": 1}
CHOICES = [("attention", "moe"), ("attention", "linear"), ("mean", "moe"), ("mean", "linear"), ("mean", "whitening")]


def _tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    text = ItemTable(torch.randn(N_ITEMS, 3, 6, generator=g), torch.rand(N_ITEMS, 3, generator=g) > 0.4)
    text.mask[0] = False  # item 0 has no text
    text.mask[1:, 0] = True
    image = ItemTable(torch.randn(N_ITEMS, 1, 5, generator=g), torch.ones(N_ITEMS, 1, dtype=torch.bool))
    image.mask[3] = False
    return {"text": text, "image": image}


def _batch():
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 1, 9, 0]])
    targets = torch.where(tokens > 0, tokens % N_ITEMS, torch.full_like(tokens, IGNORE))
    return SequenceBatch(tokens, torch.tensor([4, 2, 3]), torch.arange(3), targets=targets)


# ------------------------------------------------------------------------------------------ pooling, adaptor


def test_mean_pooling_is_the_mask_weighted_mean():
    table = _tables()["text"]
    pooled = MeanPooling()(table.vectors, table.mask)
    for i in range(N_ITEMS):
        present = table.vectors[i][table.mask[i]]
        expected = present.mean(0) if len(present) else torch.zeros(6)
        torch.testing.assert_close(pooled[i], expected)
    assert pooled[0].abs().sum() == 0  # no vector: zeros


def test_the_settings_build_the_parts_they_name():
    attention = ContentConfig(pool_hidden=5, pool_scorer="mlp")
    pool = make_pooling(attention, 6)
    assert isinstance(pool, AttentionPooling) and pool.proj.out_features == 5 and pool.nonlinear
    assert isinstance(make_pooling(ContentConfig(pooling="mean"), 6), MeanPooling)
    moe = make_adaptor(ContentConfig(experts=3, adaptor_dropout=0.1), 6, 4)
    assert isinstance(moe, MoEAdaptor) and moe.experts == 3 and moe.dropout.p == 0.1
    linear = make_adaptor(ContentConfig(adaptor="linear"), 6, 4)
    assert type(linear) is nn.Linear and (linear.in_features, linear.out_features) == (6, 4)
    with pytest.raises(ValueError):
        ContentConfig(pooling="max")


def test_content_encoder_is_pooling_then_adaptor_with_a_missing_input():
    table = _tables()["text"]
    torch.manual_seed(0)
    part = ContentEncoder(6, 4, ContentConfig(pooling="mean", adaptor="linear"))
    nn.init.normal_(part.missing)
    out = part(table)
    torch.testing.assert_close(out[1:], part.adaptor(MeanPooling()(table.vectors, table.mask))[1:])
    torch.testing.assert_close(out[0], part.adaptor(part.missing))  # item 0 has no text
    torch.testing.assert_close(part(table, torch.tensor([4, 0])), out[[4, 0]])


def test_content_encoders_check_dimensions_and_forget_cached_items_on_load():
    tables = _tables()
    encoders = ContentEncoders(tables, 4, ContentConfig()).eval()
    with pytest.raises(ConfigError, match="dimensions"):
        encoders.set_tables({"text": ItemTable(torch.zeros(2, 1, 7), torch.ones(2, 1, dtype=torch.bool))})
    with pytest.raises(ConfigError, match="no audio"):
        encoders.set_tables({"audio": tables["text"]})
    with torch.no_grad():
        first = encoders.encode_all()
        assert encoders.encode_all() is first  # reused in eval mode
        state = {k: torch.randn_like(v) for k, v in encoders.state_dict().items()}
        encoders.load_state_dict(state)
        assert not torch.equal(encoders.encode_all()["text"], first["text"])


def test_whitening_adaptor_is_unisrecs_mixture_of_whitening_experts():
    torch.manual_seed(0)
    adaptor = make_adaptor(ContentConfig(adaptor="whitening", experts=3, adaptor_dropout=0.0), 6, 4)
    assert isinstance(adaptor, WhiteningAdaptor)
    e = torch.randn(5, 6)
    torch.testing.assert_close(adaptor.eval()(e), sum((e - adaptor.bias[k]) @ adaptor.weight[k] for k in range(3)) / 3)
    for p in (adaptor.bias, adaptor.gate, adaptor.noise):
        nn.init.normal_(p)
    gate = torch.softmax(e @ adaptor.gate, dim=-1)
    expected = sum(gate[:, k:k + 1] * ((e - adaptor.bias[k]) @ adaptor.weight[k]) for k in range(3))
    torch.testing.assert_close(adaptor(e), expected)
    adaptor.train()  # a noisy gate in training
    assert not torch.allclose(adaptor(e), expected)


# ------------------------------------------------------------------------------------------ the ID part


def test_id_part_gives_zero_rows_to_items_added_after_training():
    ids = IDEmbedding(5, 3)
    rows = ids(torch.tensor([[0, 4, 5], [7, 2, 100]]))
    torch.testing.assert_close(rows[0, :2], ids.weight[[0, 4]])
    torch.testing.assert_close(rows[1, 1], ids.weight[2])
    assert rows[0, 2].abs().sum() == 0 and rows[1, [0, 2]].abs().sum() == 0


def test_mp4sr_scores_an_added_item_by_its_content_alone():
    model = build_model("mp4sr", SMALL, ModelContext(N_ITEMS, max_len=6, features=_tables())).eval()
    tables = model.tables
    model.set_item_tables({m: ItemTable(torch.cat([t.vectors, t.vectors[5:6]]), torch.cat([t.mask, t.mask[5:6]]))
                           for m, t in tables.items()})
    assert model.n_items == N_ITEMS + 1
    with torch.no_grad():
        items = model._output_items()
        content = {m: torch.nn.functional.normalize(model.all_item_reps()[m][-1], dim=-1) for m in model.modalities}
    for m in model.modalities:
        torch.testing.assert_close(items[m][-1], content[m])


# ------------------------------------------------------------------------------------------ the models


@pytest.mark.parametrize("pooling,adaptor", CHOICES)
@pytest.mark.parametrize("name", CONTENT_MODELS)
def test_every_content_model_builds_and_trains_with_every_choice(name, pooling, adaptor):
    torch.manual_seed(0)
    params = {**SMALL, "pooling": pooling, "adaptor": adaptor}
    model = build_model(name, params, ModelContext(N_ITEMS, max_len=6, features=_tables()))
    assert (model.config.pooling, model.config.adaptor) == (pooling, adaptor)
    assert any(isinstance(m, AttentionPooling if pooling == "attention" else MeanPooling) for m in model.modules())
    kind = {"moe": MoEAdaptor, "whitening": WhiteningAdaptor, "linear": nn.Linear}[adaptor]
    assert any(isinstance(m, kind) for m in model.modules())
    assert any(isinstance(m, MoEAdaptor) for m in model.modules()) == (adaptor == "moe")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model.calculate_loss(_batch())
    loss.backward()
    assert torch.isfinite(loss)
    # the pooling over the text vectors is trained (one image vector per item: its weight is always 1)
    pools = [m for m in model.modules() if isinstance(m, AttentionPooling) and m.proj.in_features == 6]
    if pooling == "attention":
        assert pools and all(p.proj.weight.grad is not None and p.proj.weight.grad.abs().sum() > 0 for p in pools)
    opt.step()
    with torch.no_grad():
        scores = model.eval().full_sort_predict(_batch())
    assert scores.shape == (3, N_ITEMS) and torch.isfinite(scores).all()


def test_sasrecm_takes_mp4srs_item_encoder():
    """`params.pooling=attention params.adaptor=moe`: SASRecM's content part is MP4SR's item encoder."""
    model = build_model("sasrecm", {**SMALL, "pooling": "attention", "adaptor": "moe"},
                        ModelContext(N_ITEMS, max_len=6, features=_tables()))
    names = set(model.state_dict())
    assert {"content.pool.text.proj.weight", "content.pool.text.score.weight", "content.proj.text.linear.weight",
            "content.proj.image.gate.weight"} <= names
    # the items' vectors are data, outside the state dict
    assert not any(n.startswith("content.vectors") or n.startswith("content.mask") for n in names)


@pytest.mark.parametrize("name,expected", [
    ("mp4sr", {"item_encoders.text.pool.proj.weight", "item_encoders.text.pool.score.bias",
               "item_encoders.text.adaptor.linear.weight", "item_encoders.text.adaptor.norm_weight",
               "item_encoders.text.adaptor.gate.weight", "item_encoders.text.missing", "id_embedding.weight"}),
    ("unisrec", {"item_encoders.text.pool.proj.weight", "item_encoders.text.adaptor.linear.weight",
                 "item_encoders.text.missing", "id_embedding.weight"}),
    ("sasrecm", {"content.proj.text.weight", "content.proj.text.bias", "content.proj.image.weight"}),
    ("fdsa", {"content.proj.text.weight", "content.proj.image.bias", "feature_attention.proj.weight"}),
])
def test_default_settings_keep_the_names_of_older_checkpoints(name, expected):
    model = build_model(name, SMALL, ModelContext(N_ITEMS, max_len=6, features=_tables()))
    names = set(model.state_dict())
    assert expected <= names
    assert not any(".pool." in n for n in names if n.startswith("content."))  # mean pooling has no weights


def test_defaults_of_each_model():
    defaults = {name: build_model(name, SMALL, ModelContext(N_ITEMS, max_len=6, features=_tables())).config
                for name in CONTENT_MODELS}
    for name in ("mp4sr", "unisrec"):
        assert (defaults[name].pooling, defaults[name].adaptor) == ("attention", "moe")
    for name in ("sasrecm", "fdsa"):
        assert (defaults[name].pooling, defaults[name].adaptor) == ("mean", "linear")


def test_unisrec_is_its_own_model():
    assert not issubclass(UniSRec, MP4SR)
    assert all(issubclass(UniSRec, c) for c in (Factorised, ExtensibleCatalogue, Pretrainable, SequentialRecommender))
    assert "freeze_encoder" not in UniSRecConfig.model_fields and "encoder_lr_scale" not in UniSRecConfig.model_fields
    with pytest.raises(ConfigError):
        build_model("unisrec", {"freeze_encoder": True}, ModelContext(N_ITEMS, max_len=6, features=_tables()))


def test_unisrec_ranks_by_user_and_item_vectors():
    torch.manual_seed(0)
    model = build_model("unisrec", SMALL, ModelContext(N_ITEMS, max_len=6, features=_tables())).eval()
    with torch.no_grad():
        scores = model.full_sort_predict(_batch())
        users, items = model.user_vectors(_batch()), model.item_vectors()
    torch.testing.assert_close(scores, users @ items.T)
    assert users.shape == (3, SMALL["hidden"]) and items.shape == (N_ITEMS, SMALL["hidden"])
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(3))


def test_moe_over_constant_content_has_the_gradients_of_the_plain_form():
    """The MoE adaptor's path for constant content (no input gradient over the present rows) gives the
    output of the plain form exactly, and the same gradients for its weights and the 'missing' input."""
    from mp4sr.models.items import MoEAdaptor

    torch.manual_seed(0)
    adaptor = MoEAdaptor(6, 4, experts=3, dropout=0.3)
    missing = torch.nn.Parameter(torch.randn(6))
    e = torch.randn(12, 6)
    absent = (torch.arange(12) % 4 == 1).unsqueeze(-1)

    def run(fast: bool):
        adaptor.zero_grad()
        missing.grad = None
        torch.manual_seed(1)  # the same dropout masks
        out = adaptor(e, absent, missing) if fast else adaptor(torch.where(absent, missing, e))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in (*adaptor.parameters(), missing)]

    out, grads = run(fast=True)
    expected, expected_grads = run(fast=False)
    assert torch.equal(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert grads[-1].abs().sum() > 0  # the absent rows reach 'missing'
