"""The optimiser: Adam (coupled L2 on every parameter) or AdamW, no-decay groups, MP4SR's learning-rate groups."""

import pytest
import torch

from mp4sr.config import TrainSettings
from mp4sr.models import ModelContext, build_model
from mp4sr.models.items import ItemTable
from mp4sr.train.optim import make_optimizer

N_ITEMS = 20


def _sasrec():
    torch.manual_seed(0)
    return build_model("sasrec", {"hidden": 8, "ffn": 16}, ModelContext(N_ITEMS, max_len=6))


def _mp4sr(**params):
    torch.manual_seed(0)
    text = ItemTable(torch.randn(N_ITEMS, 3, 6), torch.ones(N_ITEMS, 3, dtype=torch.bool))
    return build_model("mp4sr", {"hidden": 8, "ffn": 16, "modalities": ["text"], **params},
                       ModelContext(N_ITEMS, max_len=6, features={"text": text}))


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _is_norm(name: str) -> bool:  # the LayerNorms of SASRec and MP4SR, by where they sit
    return any(part in name for part in (".norm.", ".norm1.", ".norm2.", "norm_weight", "norm_bias")) or \
        name.startswith("norm.")


def test_adam_default_decays_every_parameter_in_one_group():
    model = _sasrec()
    (group,) = make_optimizer(model, TrainSettings(weight_decay=0.1)).param_groups
    assert _names(model, group["params"]) == {n for n, _ in model.named_parameters()}
    assert group["weight_decay"] == 0.1 and isinstance(make_optimizer(model, TrainSettings()), torch.optim.Adam)


def test_adamw_exempts_biases_and_norms_by_default():
    model = _sasrec()
    optimizer = make_optimizer(model, TrainSettings(optimizer="adamw", weight_decay=0.1))
    assert type(optimizer) is torch.optim.AdamW
    decayed, kept = optimizer.param_groups
    names = {n for n, _ in model.named_parameters()}
    expected_kept = {n for n in names if "bias" in n or _is_norm(n)}
    assert _names(model, kept["params"]) == expected_kept and kept["weight_decay"] == 0.0
    assert _names(model, decayed["params"]) == names - expected_kept and decayed["weight_decay"] == 0.1
    assert {"item_embedding.weight", "transformer.position.weight", "transformer.norm.weight",
            "transformer.encoder.layers.0.self_attn.in_proj_bias"} <= names
    assert "transformer.norm.weight" in expected_kept and "item_embedding.weight" not in expected_kept


def test_embeddings_can_be_exempted_too():
    model = _sasrec()
    settings = TrainSettings(optimizer="adamw", weight_decay=0.1, no_decay=["embedding"])
    decayed, kept = make_optimizer(model, settings).param_groups
    assert _names(model, kept["params"]) == {"item_embedding.weight", "transformer.position.weight"}
    assert "transformer.norm.weight" in _names(model, decayed["params"])  # only what was asked for


def test_no_decay_splits_mp4sr_learning_rate_groups():
    model = _mp4sr(encoder_lr_scale=0.1)
    settings = TrainSettings(lr=1e-3, optimizer="adamw", weight_decay=0.1, no_decay=["bias", "norm", "embedding"])
    groups = make_optimizer(model, settings).param_groups
    # the ID embeddings: one group at train.lr, exempt; the encoder: decayed and exempt parts at lr / 10
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.0), (pytest.approx(1e-4), 0.1),
                                                              (pytest.approx(1e-4), 0.0)]
    assert _names(model, groups[0]["params"]) == {"id_embedding.weight"}
    kept = _names(model, groups[2]["params"])
    assert {"item_encoders.text.adaptor.norm_weight", "item_encoders.text.adaptor.norm_bias",
            "transformer.position.weight", "item_encoders.text.pool.proj.bias"} <= kept
    assert "item_encoders.text.adaptor.linear.weight" in _names(model, groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_exempt_parameters_do_not_move(optimizer):
    """A step with zero gradients moves only what weight decay acts on; AdamW shrinks it by lr * decay."""
    model = _sasrec()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = TrainSettings(optimizer=optimizer, lr=1e-2, weight_decay=0.5, no_decay=["bias", "norm"])
    opt = make_optimizer(model, settings)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        exempt = "bias" in name or _is_norm(name)
        nonzero = bool(before[name].abs().sum() > 0)  # zero-initialised biases cannot move either way
        assert (not torch.equal(p.detach(), before[name])) == (not exempt and nonzero), name
        if optimizer == "adamw":
            factor = 1.0 if exempt else 1 - settings.lr * settings.weight_decay
            torch.testing.assert_close(p.detach(), before[name] * factor)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_betas_reach_the_optimiser(optimizer):
    default = make_optimizer(_sasrec(), TrainSettings(optimizer=optimizer))
    assert all(g["betas"] == (0.9, 0.999) for g in default.param_groups)
    rectools = make_optimizer(_sasrec(), TrainSettings(optimizer=optimizer, betas=[0.9, 0.98]))
    assert all(g["betas"] == (0.9, 0.98) for g in rectools.param_groups)
