"""The baselines of the paper's comparison: one epoch on real data each, padding invariance, learning on a
fixed batch, and the pieces of each (cloze masking, augmentations, losses, fine-tuning switches)."""

import math

import numpy as np
import pytest
import torch

from mp4sr.models import bert4rec, cl4srec, unisrec
from mp4sr.config import EvalSettings, TrainSettings
from mp4sr.data import leave_one_out, train_batches
from mp4sr.data.batching import IGNORE, PAD, SequenceBatch, eval_batches
from mp4sr.errors import ConfigError
from mp4sr.models import ModelContext, build_model
from mp4sr.models.items import ItemTable
from mp4sr.train import Trainer

BASELINES = ["gru4rec", "bert4rec", "sasrecm", "fdsa", "cl4srec", "unisrec"]
NO_DROPOUT = {
    "gru4rec": {"dropout": 0.0}, "bert4rec": {"dropout": 0.0, "attn_dropout": 0.0},
    "sasrecm": {"dropout": 0.0, "attn_dropout": 0.0}, "fdsa": {"dropout": 0.0, "attn_dropout": 0.0},
    "cl4srec": {"dropout": 0.0, "attn_dropout": 0.0}, "unisrec": {"dropout": 0.0, "adaptor_dropout": 0.0, "hidden": 64},
}

SMOKE = {"unisrec": {"hidden": 64}}  # its default hidden size (300) makes an epoch 5x slower on a CPU


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: several times faster than two on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split(scientific_mm):
    return leave_one_out(scientific_mm)


@pytest.fixture(scope="module")
def features(scientific_mm):
    from mp4sr.features import feature_stores

    stores = feature_stores(scientific_mm, progress=False)
    return {m: ItemTable.from_store(s) for m, s in stores.items() if s is not None}


@pytest.fixture(scope="module")
def values(split):
    return torch.from_numpy(split.dataset.sequences.items)


def _context(split, features):
    return ModelContext(split.dataset.n_items, 50, split.train_counts(), features=features)


def _fit(model, split, **settings):
    settings = TrainSettings(**{"epochs": 1, "batch_size": 512, "progress": False, **settings})
    return Trainer(model, split, split.train_examples("sequence"), settings, EvalSettings(), 50).fit()


# ------------------------------------------------------------------------------------------ every model


@pytest.mark.parametrize("name", BASELINES)
def test_one_epoch_on_real_data(name, split, features, values):
    torch.manual_seed(0)
    model = build_model(name, SMOKE.get(name, {}), _context(split, features))
    result = _fit(model, split)
    assert 0.0 <= result.test["ndcg@10"] <= 1.0 and len(result.test_ranks) == len(split.test)
    batch = next(eval_batches(values, split.test, 50, 7))
    assert model.full_sort_predict(batch).shape == (7, split.dataset.n_items)


@pytest.mark.parametrize("name", BASELINES)
def test_scores_do_not_depend_on_padding(name, split, features, values):
    torch.manual_seed(0)
    model = build_model(name, {}, _context(split, features)).eval()
    batch = next(eval_batches(values, split.test, 50, 64))
    together = model.full_sort_predict(batch)
    for i in (len(batch) - 1, len(batch) - 2, 0):  # the longest rows, and one of the shortest (most padded)
        n = int(batch.lengths[i])
        alone = SequenceBatch(batch.tokens[i : i + 1, :n], batch.lengths[i : i + 1], batch.rows[i : i + 1])
        assert torch.allclose(model.full_sort_predict(alone)[0], together[i], atol=1e-4), i


@pytest.mark.parametrize("name", BASELINES)
def test_loss_decreases_on_a_fixed_batch(name, split, features, values):
    torch.manual_seed(0)
    model = build_model(name, NO_DROPOUT[name], _context(split, features))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(train_batches(values, split.train_examples(), 128, np.random.default_rng(0)))
    torch.manual_seed(1)
    first = model.calculate_loss(batch).item()
    for _ in range(15):
        opt.zero_grad()
        model.calculate_loss(batch).backward()
        opt.step()
    torch.manual_seed(1)
    assert model.calculate_loss(batch).item() < first - 0.3


@pytest.mark.parametrize("name", ["sasrecm", "fdsa", "unisrec"])
def test_content_models_need_their_features(name, split):
    with pytest.raises(ConfigError, match="features"):
        build_model(name, {}, ModelContext(split.dataset.n_items, 50, features={}))


# ------------------------------------------------------------------------------------------ BERT4Rec


def test_cloze_masks_real_items_only_and_at_least_one():
    torch.manual_seed(0)
    tokens = torch.tensor([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    for _ in range(20):
        masked, labels = bert4rec.cloze(tokens, 0.2, mask_token=99)
        is_masked = masked == 99
        assert (is_masked.sum(1) >= 1).all()
        assert not (is_masked & (tokens == PAD)).any()
        assert torch.equal(labels[is_masked], tokens[is_masked] - 1)
        assert (labels[~is_masked] == IGNORE).all() and torch.equal(masked[~is_masked], tokens[~is_masked])


def test_append_token_goes_after_each_sequence():
    tokens = torch.tensor([[3, 4, 0], [5, 6, 7]])
    out = bert4rec.append_token(tokens, torch.tensor([2, 3]), torch.tensor([9, 8]))
    assert out.tolist() == [[3, 4, 9, 0], [5, 6, 7, 8]]


def test_bert4rec_trains_on_the_whole_sequence_with_its_last_target(split, features, values, monkeypatch):
    model = build_model("bert4rec", {}, _context(split, features))
    seen = {}
    original = bert4rec.cloze

    def spy(tokens, ratio, mask_token):
        seen["tokens"] = tokens
        return original(tokens, ratio, mask_token)

    monkeypatch.setattr(bert4rec, "cloze", spy)
    batch = next(train_batches(values, split.train_examples(), 16, np.random.default_rng(0)))
    model.calculate_loss(batch)
    rows = torch.arange(16)
    assert torch.equal(seen["tokens"][rows, batch.lengths], batch.targets[rows, batch.lengths - 1] + 1)


# ------------------------------------------------------------------------------------------ CL4SRec


def test_crop_keeps_a_contiguous_part():
    torch.manual_seed(0)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([10, 3])
    out, new_lengths = cl4srec.crop(tokens, lengths, 0.6)
    assert new_lengths.tolist() == [6, 1]
    for row, n, original in zip(out.tolist(), new_lengths.tolist(), tokens.tolist()):
        part = row[:n]
        start = original.index(part[0])
        assert original[start : start + n] == part and all(t == 0 for t in row[n:])


def test_mask_and_reorder_counts():
    torch.manual_seed(0)
    tokens = torch.arange(1, 21).reshape(2, 10)
    tokens[1, 5:] = 0
    lengths = torch.tensor([10, 5])
    masked = cl4srec.mask(tokens, lengths, 0.3, mask_token=99)
    assert (masked == 99).sum(1).tolist() == [3, 1]
    assert not ((masked == 99) & (tokens == 0)).any()
    for _ in range(10):
        shuffled = cl4srec.reorder(tokens, lengths, 0.6)
        assert torch.equal(shuffled.sort(1).values, tokens.sort(1).values)
        for row, span in ((0, 6), (1, 3)):  # moved positions lie in one span of floor(0.6 * length)
            changed = (shuffled[row] != tokens[row]).nonzero()[:, 0]
            if len(changed):
                assert changed.max() - changed.min() < span


def test_nt_xent_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z = torch.cat([a, b])
    expected = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        logits = [float(z[i] @ z[j]) for j in range(6) if j != i]
        expected += -(float(z[i] @ z[pos]) - math.log(sum(math.exp(v) for v in logits)))
    assert cl4srec.nt_xent(a, b, 1.0).item() == pytest.approx(expected / 6, rel=1e-5)


# ------------------------------------------------------------------------------------------ content models


def _tiny_tables(n=12, image_missing=(2,)):
    g = torch.Generator().manual_seed(0)
    text = ItemTable(torch.randn(n, 3, 8, generator=g), torch.ones(n, 3, dtype=torch.bool))
    image = ItemTable(torch.randn(n, 1, 6, generator=g), torch.ones(n, 1, dtype=torch.bool))
    image.mask[list(image_missing)] = False
    return {"text": text, "image": image}


def test_sasrecm_item_table_adds_projected_pooled_content():
    tables = _tiny_tables()
    model = build_model("sasrecm", {"hidden": 4}, ModelContext(12, 5, features=tables))
    c = model.content
    expected = model.item_embedding.weight[1:] + c.proj["text"](tables["text"].vectors.mean(1))
    with_image = c.proj["image"](tables["image"].vectors[:, 0])
    with_image[2] = 0.0  # item 2 has no image: its image part is absent
    assert torch.allclose(model.item_table(), expected + with_image, atol=1e-6)


def test_fdsa_feature_branch_sees_content():
    tables = _tiny_tables()
    torch.manual_seed(0)
    model = build_model("fdsa", {"hidden": 8, "ffn": 16}, ModelContext(12, 5, features=tables)).eval()
    batch = SequenceBatch(torch.tensor([[1, 2, 3]]), torch.tensor([3]), torch.tensor([0]))
    before = model.full_sort_predict(batch)
    tables["text"].vectors[0] += 1.0
    model.content.pooled_text[0] += 1.0
    assert not torch.allclose(before, model.full_sort_predict(batch))


# ------------------------------------------------------------------------------------------ UniSRec


def test_unisrec_pretrain_then_finetune_fixes_the_encoder(split, features):
    ctx = _context(split, features)
    pre = build_model("unisrec", {"stage": "pretrain", "hidden": 32}, ctx)
    fine = build_model("unisrec", {"hidden": 32}, ctx)
    missing = fine.load_pretrained(pre.state_dict())
    assert missing == ["id_embedding.weight"]
    frozen = {n for n, p in fine.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("transformer.position", "transformer.encoder")) for n in frozen)
    assert fine.item_encoders["text"].adaptor.linear.weight.requires_grad
    scratch = build_model("unisrec", {"hidden": 32}, ctx)  # without pre-training nothing is fixed
    assert all(p.requires_grad for p in scratch.parameters())


def test_unisrec_inductive_has_no_id_embedding_and_is_text_only(split, features):
    model = build_model("unisrec", {"hidden": 32, "id_embedding": False}, _context(split, features))
    assert model.id_embedding is None and model.modalities == ["text"]
    with pytest.raises(ConfigError):
        build_model("unisrec", {"modalities": ["image"]}, _context(split, features))


def test_seq_seq_loss_masks_sequences_with_the_same_target():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    targets = torch.tensor([1, 2, 1, 3])
    an, bn = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    expected = 0.0
    for i in range(4):
        keep = [j for j in range(4) if j == i or targets[j] != targets[i]]
        logits = [float(an[i] @ bn[j]) / 0.07 for j in keep]
        expected += -(float(an[i] @ bn[i]) / 0.07 - math.log(sum(math.exp(v) for v in logits)))
    assert unisrec.seq_seq_loss(a, b, targets, 0.07).item() == pytest.approx(expected / 4, rel=1e-5)
