"""MP4SR: losses against direct computations, mixup and dropout invariants, gradients, checkpoints."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.models import ModelContext, build_model
from mp4sr.models.items import ItemTable
from mp4sr.models.mp4sr import cmcl_loss
from mp4sr.models.pretraining import info_nce, item_dropout

N_ITEMS, DIM, K = 30, 12, 3


def _tables(seed=0, image_missing=(3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    text = ItemTable(torch.randn(N_ITEMS, K, DIM, generator=g), torch.rand(N_ITEMS, K, generator=g) > 0.3)
    text.mask[:, 0] = True
    image = ItemTable(torch.randn(N_ITEMS, 1, DIM + 4, generator=g), torch.ones(N_ITEMS, 1, dtype=torch.bool))
    image.mask[list(image_missing)] = False
    return {"text": text, "image": image}


def _model(**params):
    torch.manual_seed(0)
    params = {"hidden": 16, "ffn": 32, **params}
    return build_model("mp4sr", params, ModelContext(N_ITEMS, max_len=8, features=_tables()))


def _batch(rows, targets=None):
    width = max(map(len, rows))
    tokens = torch.tensor([[i + 1 for i in r] + [0] * (width - len(r)) for r in rows])
    if targets is None:  # whole-sequence targets: next item = item + 1 (mod N)
        targets = torch.where(tokens > 0, tokens % N_ITEMS, torch.full_like(tokens, IGNORE))
    return SequenceBatch(tokens, torch.tensor([len(r) for r in rows]), torch.arange(len(rows)), targets=targets)


def test_info_nce_matches_direct_formula():
    g = torch.Generator().manual_seed(1)
    a, c = torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2])
    expected = 0.0
    for i in range(5):
        sims = [float(F.cosine_similarity(a[i], c[j], dim=0)) / 0.07 for j in range(4)]
        expected += -(sims[labels[i]] - math.log(sum(math.exp(s) for s in sims)))
    assert info_nce(a, c, labels, 0.07).item() == pytest.approx(expected / 5, rel=1e-5)


def test_cmcl_matches_direct_formula_with_false_negatives():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    targets = torch.tensor([7, 8, 7, 9])  # sequences 0 and 2 share their target: not negatives of each other
    tau = 0.07
    an, bn = F.normalize(a, dim=1), F.normalize(b, dim=1)

    def side(x, y, i):
        e = lambda u, v: math.exp(float(u @ v) / tau)  # noqa: E731
        denom = sum(e(x[i], y[j]) for j in range(4) if j == i or targets[j] != targets[i])
        denom += sum(e(x[i], x[j]) for j in range(4) if j != i and targets[j] != targets[i])
        return -math.log(e(x[i], y[i]) / denom)

    expected = sum(side(an, bn, i) + side(bn, an, i) for i in range(4)) / 4 / 2
    assert cmcl_loss(a, b, targets, tau).item() == pytest.approx(expected, rel=1e-5)


def test_nip_masks_repeats_of_the_positive():
    model = _model(cmcl=False, mixup=False, item_dropout_max=0.0, stage="pretrain").eval()
    # two positions predict item 5: item 5 must appear once among the candidates, never as a negative
    batch = _batch([[1, 2], [3, 4]], targets=torch.tensor([[5, 6], [5, 7]]))
    loss = model.pretrain_loss(batch)
    real = batch.tokens > 0
    z = {m: model.item_reps(m) for m in ("text", "image")}
    h = model._encode({m: z[m][(batch.tokens - 1).clamp(min=0)] for m in z}, real, None)
    cand = torch.tensor([5, 6, 7])
    expected = sum(
        info_nce(h[m][real], z[m][cand], torch.tensor([0, 1, 0, 2]), 0.07) for m in ("text", "image")
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_never_touches_padding_or_missing_modalities():
    model = _model(mixup_max=1.0)
    rows = [[0, 3, 1, 2, 4], [5, 6], [7, 8, 9, 3]]
    batch = _batch(rows)
    real = batch.tokens > 0
    items = (batch.tokens - 1).clamp(min=0)
    zt = torch.arange(1, 1 + items.numel()).float().view_as(items)[..., None].expand(-1, -1, 4).clone()
    zv = -zt
    swapped = torch.zeros_like(real)
    for _ in range(200):
        out = model._mixup({"text": zt, "image": zv}, items, real)
        s = out["text"][..., 0] != zt[..., 0]
        assert torch.equal(out["image"][..., 0] != zv[..., 0], s)  # complementary: both swap together
        swapped |= s
    allowed = real & ~torch.isin(items, torch.tensor([3, 4, 5]))
    assert not (swapped & ~allowed).any()
    assert swapped[allowed].all()  # with p up to 1, every allowed position swaps at some point


def test_item_dropout_packs_left_and_keeps_targets():
    torch.manual_seed(0)
    batch = _batch([[0, 1, 2, 3, 4, 5], [6, 7], [8]])
    for _ in range(50):
        out = item_dropout(batch, 0.9)
        for r in range(3):
            n = int(out.lengths[r])
            assert n >= 1 and (out.tokens[r, n:] == 0).all() and (out.targets[r, n:] == IGNORE).all()
            kept = (out.tokens[r, :n] - 1).tolist()
            original = (batch.tokens[r, : batch.lengths[r]] - 1).tolist()
            assert kept == sorted(kept, key=original.index)  # order preserved
            # each kept item predicts the item after the dropped run that follows it
            for p, item in enumerate(kept):
                nxt = kept[p + 1] if p + 1 < n else None
                expect = (original[original.index(nxt) - 1] + 1) % N_ITEMS if nxt is not None else (original[-1] + 1) % N_ITEMS
                assert int(out.targets[r, p]) == expect


def test_finetune_loss_is_the_cross_entropy_of_the_summed_cosine_scores():
    """Fine-tuning: every output position against every item, scored by the sum over modalities of
    the cosine of its output and the item (content + ID embedding), divided by tau."""
    model = _model(stage="finetune").eval()
    batch = _batch([[0, 1, 2, 3], [4, 6, 7], [9]])
    loss = model.calculate_loss(batch)
    z = model.all_item_reps()
    h = model._hidden(batch, z)
    ids = model.id_embedding(torch.arange(N_ITEMS))
    keep = batch.targets != IGNORE
    scores = sum(F.cosine_similarity(h[m][keep].unsqueeze(1), (z[m] + ids).unsqueeze(0), dim=-1)
                 for m in ("text", "image"))
    expected = F.cross_entropy(scores / model.config.tau, batch.targets[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_reach_attention_pooling_in_both_stages():
    for stage in ("pretrain", "finetune"):
        model = _model(stage=stage)
        model.calculate_loss(_batch([[0, 1, 2, 3], [4, 6, 7]])).backward()
        for m in ("text",):
            grad = model.item_encoders[m].pool.proj.weight.grad
            assert grad is not None and grad.abs().sum() > 0, stage


def test_inductive_model_scores_an_added_item():
    model = _model(id_embedding=False).eval()
    batch = _batch([[0, 1, 2], [7, 8]])
    before = model.full_sort_predict(batch)
    tables = _tables()
    extended = {m: ItemTable(torch.cat([t.vectors, t.vectors[10:11]]), torch.cat([t.mask, t.mask[10:11]]))
                for m, t in tables.items()}
    model.set_item_tables(extended)
    after = model.full_sort_predict(batch)
    assert after.shape == (2, N_ITEMS + 1)
    assert torch.allclose(after[:, :N_ITEMS], before, atol=1e-6)
    assert torch.allclose(after[:, N_ITEMS], after[:, 10], atol=1e-6)


def test_transductive_added_item_is_scored_from_content():
    model = _model().eval()
    tables = _tables()
    model.set_item_tables({m: ItemTable(torch.cat([t.vectors, t.vectors[:1]]), torch.cat([t.mask, t.mask[:1]]))
                           for m, t in tables.items()})
    scores = model.full_sort_predict(_batch([[1, 2]]))
    assert scores.shape == (1, N_ITEMS + 1) and torch.isfinite(scores).all()


def test_switching_off_cmcl_removes_exactly_its_term():
    """loss(cmcl on) - loss(cmcl off) = cmcl_weight * CMCL of the last positions' text and image outputs,
    on the same batch with the same weights (eval mode: no item dropout, mixup or dropout draws)."""
    weight = 0.5
    on = _model(stage="pretrain", cmcl_weight=weight).eval()
    off = _model(stage="pretrain", cmcl_weight=weight, cmcl=False).eval()
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), off.state_dict().values()))
    batch = _batch([[0, 1, 2, 3], [4, 6, 7], [8, 9], [5, 6, 7], [10, 11, 12, 13, 14]])  # rows 1 and 3 share their target
    with torch.no_grad():
        difference = on.pretrain_loss(batch) - off.pretrain_loss(batch)
        real = batch.tokens > 0
        z = {m: on.item_reps(m) for m in ("text", "image")}
        h = on._encode({m: z[m][(batch.tokens - 1).clamp(min=0)] for m in z}, real, None)
        last = torch.arange(len(batch.lengths)), batch.lengths - 1
        expected = weight * cmcl_loss(h["text"][last], h["image"][last], batch.targets[last], on.config.tau)
    assert expected.item() > 0.1
    assert difference.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ablation_switches_build_and_train():
    for params in ({"modalities": ["text"]}, {"modalities": ["image"]}, {"nip": False},
                   {"cmcl": False}, {"mixup": False}):
        model = _model(stage="pretrain", **params)
        loss = model.calculate_loss(_batch([[0, 1, 2], [4, 6]]))
        assert torch.isfinite(loss) and loss.requires_grad
    frozen = _model(freeze_encoder=True)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == ["id_embedding.weight"]


def test_encoder_learning_rate_scale():
    from mp4sr.config import TrainSettings
    from mp4sr.train.optim import make_optimizer

    settings = TrainSettings(lr=1e-3)
    ids, encoder = make_optimizer(_model(encoder_lr_scale=0.1), settings).param_groups
    assert ids["lr"] == 1e-3 and [p.shape for p in ids["params"]] == [(N_ITEMS, 16)]
    assert encoder["lr"] == pytest.approx(1e-4) and len(encoder["params"]) == len(list(_model().parameters())) - 1
    assert [g["lr"] for g in make_optimizer(_model(), settings).param_groups] == [1e-3]  # the default: one group
    assert len(make_optimizer(_model(stage="pretrain", encoder_lr_scale=0.1), settings).param_groups) == 1
    assert len(make_optimizer(_model(freeze_encoder=True, encoder_lr_scale=0.1), settings).param_groups) == 1


def test_pretrained_encoder_loads_into_finetuning():
    pre = _model(stage="pretrain")
    fine = _model(stage="finetune")
    missing = fine.load_pretrained(pre.state_dict())
    assert missing == ["id_embedding.weight"]
    for name, value in pre.state_dict().items():
        assert torch.equal(fine.state_dict()[name], value)
    other = build_model("mp4sr", {"hidden": 16, "ffn": 32, "modalities": ["text"]},
                        ModelContext(N_ITEMS, max_len=8, features=_tables()))
    with pytest.raises(Exception, match="weights this model lacks"):
        other.load_pretrained(pre.state_dict())
