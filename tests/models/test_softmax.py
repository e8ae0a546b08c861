"""The blocked full softmax: the loss and gradients of F.cross_entropy over all items, block by block,
and every model that trains with it gives the loss and gradients of the plain form."""

import pytest
import torch
import torch.nn.functional as F

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.errors import ConfigError
from mp4sr.models import ModelContext, build_model
from mp4sr.models import bert4rec, mp4sr, sasrec, unisrec
from mp4sr.models.items import ItemTable
from mp4sr.models.softmax import full_softmax_loss, seen_items


def _plain(outputs, items, targets, scale=1.0, bias=None, exclude=None):
    scores = scale * outputs @ items.T
    scores = scores + bias if bias is not None else scores
    if exclude is not None:  # written out row by row
        minus_inf = torch.zeros_like(scores)
        for row, excluded in enumerate(exclude.tolist()):
            for item in excluded:
                if item >= 0:
                    minus_inf[row, item] = float("-inf")
        scores = scores + minus_inf
    return F.cross_entropy(scores, targets)


def _inputs(n=37, v=53, d=8, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn(n, d, dtype=torch.float64, generator=g).requires_grad_()
    items = torch.randn(v, d, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(v, dtype=torch.float64, generator=g).requires_grad_() if bias else None
    return outputs, items, torch.randint(0, v, (n,), generator=g), b


@pytest.mark.parametrize("block_rows", [1, 5, 36, 37, 100])
@pytest.mark.parametrize("scale,bias", [(1.0, False), (14.3, False), (0.5, True)])
def test_loss_and_gradients_equal_the_plain_cross_entropy(block_rows, scale, bias):
    outputs, items, targets, b = _inputs(bias=bias)
    params = [outputs, items] + ([b] if bias else [])
    loss = full_softmax_loss(outputs, items, targets, scale, b, block_rows=block_rows)
    expected = _plain(outputs, items, targets, scale, b)
    # an upstream factor and a second term: backward scales the stored gradients
    grads = torch.autograd.grad(3 * loss + outputs.sum(), params)
    expected_grads = torch.autograd.grad(3 * expected + outputs.sum(), params)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_rows", [0, 1, 5, 37])
def test_excluded_items_leave_each_rows_softmax(block_rows):
    outputs, items, targets, _ = _inputs()
    g = torch.Generator().manual_seed(5)
    exclude = torch.randint(-1, items.shape[0], (len(targets), 6), generator=g)
    exclude[exclude == targets[:, None]] = -1  # never the row's target
    exclude[0] = -1  # a row that excludes nothing
    exclude[1, :] = (targets[1] + 1) % items.shape[0]  # the same item named several times
    loss = full_softmax_loss(outputs, items, targets, 2.0, block_rows=block_rows, exclude=exclude)
    expected = _plain(outputs, items, targets, 2.0, exclude=exclude)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert loss.item() < _plain(outputs, items, targets, 2.0).item()  # fewer competitors, a lower loss
    for got, want in zip(torch.autograd.grad(loss, [outputs, items]),
                         torch.autograd.grad(expected, [outputs, items])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_seen_items_are_the_earlier_items_of_each_output_except_its_target():
    # sequences (item indexes) 3 5 3 7 and 2 4; tokens are index + 1, targets the next item
    tokens = torch.tensor([[4, 6, 4, 8], [3, 5, 0, 0]])
    targets = torch.tensor([[5, 3, 7, IGNORE], [4, 9, IGNORE, IGNORE]])
    batch = SequenceBatch(tokens, torch.tensor([4, 2]), torch.arange(2), targets=targets)
    assert seen_items(batch).tolist() == [
        [3, -1, -1, -1],  # before 5: item 3
        [-1, 5, -1, -1],  # before 3 (a repeat): 5; the earlier 3 is the target itself
        [3, 5, 3, -1],  # before 7
        [2, -1, -1, -1],
        [2, 4, -1, -1],
    ]
    keep = targets != IGNORE
    keep[0, 0] = False  # the outputs a model selects, in the same order
    assert seen_items(batch, keep).tolist()[0] == [-1, 5, -1, -1]


def test_history_negatives_need_the_full_softmax():
    with pytest.raises(ConfigError, match="loss=full"):
        build_model("sasrec", {"loss": "sampled", "history_negatives": False}, ModelContext(10))


def test_extreme_scores_stay_finite():
    """A target far below the top score (probability underflowing to 0) still gets its exact loss."""
    outputs = torch.tensor([[1.0], [1.0]], requires_grad=True)
    items = torch.tensor([[200.0], [0.0], [-200.0]], requires_grad=True)
    targets = torch.tensor([2, 0])
    loss = full_softmax_loss(outputs, items, targets, block_rows=1)
    expected = _plain(outputs, items, targets)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_frozen_items_and_no_gradient():
    outputs, items, targets, _ = _inputs()
    items.requires_grad_(False)
    loss = full_softmax_loss(outputs, items, targets, block_rows=4)
    (grad,) = torch.autograd.grad(loss, [outputs])
    torch.testing.assert_close(grad, torch.autograd.grad(_plain(outputs, items, targets), [outputs])[0])
    with torch.no_grad():
        assert full_softmax_loss(outputs, items, targets).item() == pytest.approx(loss.item(), rel=1e-12)


def test_blocks_fit_the_cpu_budget():
    """On the CPU a block of scores stays below glibc's 32 MiB mmap threshold."""
    from mp4sr.models import softmax

    seen = []
    original = softmax._scores

    def spy(*args):
        out = original(*args)
        seen.append(out.numel() * out.element_size())
        return out

    outputs, items = torch.randn(3000, 4, requires_grad=True), torch.randn(5000, 4)
    softmax._scores = spy
    try:
        full_softmax_loss(outputs, items, torch.randint(0, 5000, (3000,)))
    finally:
        softmax._scores = original
    assert len(seen) > 1 and max(seen) <= softmax.CPU_BLOCK_BYTES < 32 * 2**20


# ---------------------------------------------------------------- the models that train with it

N_ITEMS, DIM = 40, 12


def _features():
    g = torch.Generator().manual_seed(0)
    text = ItemTable(torch.randn(N_ITEMS, 3, DIM, generator=g), torch.rand(N_ITEMS, 3, generator=g) > 0.3)
    text.mask[:, 0] = True
    image = ItemTable(torch.randn(N_ITEMS, 1, DIM + 4, generator=g), torch.ones(N_ITEMS, 1, dtype=torch.bool))
    return {"text": text, "image": image}


def _batch():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, N_ITEMS, (n,), generator=g).tolist() for n in (7, 3, 9, 5)]
    tokens = torch.tensor([[i + 1 for i in r] + [0] * (9 - len(r)) for r in rows])
    targets = torch.where(tokens > 0, tokens % N_ITEMS, torch.full_like(tokens, IGNORE))
    return SequenceBatch(tokens, torch.tensor([len(r) for r in rows]), torch.arange(4), targets=targets)


@pytest.mark.parametrize("name,module", [("sasrec", sasrec), ("sasrecm", sasrec), ("fdsa", sasrec),
                                         ("gru4rec", sasrec), ("cl4srec", sasrec), ("bert4rec", bert4rec),
                                         ("unisrec", unisrec), ("mp4sr", mp4sr)])
def test_models_train_with_the_loss_and_gradients_of_the_plain_form(name, module, monkeypatch):
    torch.manual_seed(0)
    model = build_model(name, {"hidden": 16}, ModelContext(N_ITEMS, max_len=10, features=_features()))
    model.eval()  # no dropout: both forms see the same network

    def loss_and_grads():
        torch.manual_seed(3)  # BERT4Rec's cloze masks
        model.zero_grad()
        loss = model.calculate_loss(_batch())
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    monkeypatch.setattr("mp4sr.models.softmax.CPU_BLOCK_BYTES", 4 * N_ITEMS * 5)  # blocks of 5 outputs
    loss, grads = loss_and_grads()
    monkeypatch.setattr(module, "full_softmax_loss", _plain)
    expected, expected_grads = loss_and_grads()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], rtol=1e-4, atol=1e-6, msg=key)


def _lower_loss_of_the_plain_form(model, default, batch, module, monkeypatch):
    """``model`` (``default``'s weights, with items left out of its softmax) has a lower loss than
    ``default``, and the loss and gradients of the plain form; returns its gradients."""
    model.load_state_dict(default.state_dict())
    model.eval(), default.eval()

    def loss_and_grads(m):
        torch.manual_seed(3)  # CL4SRec's augmentations
        m.zero_grad()
        loss = m.calculate_loss(batch)
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    monkeypatch.setattr("mp4sr.models.softmax.CPU_BLOCK_BYTES", 4 * N_ITEMS * 5)  # blocks of 5 outputs
    loss, grads = loss_and_grads(model)
    assert loss < loss_and_grads(default)[0]
    monkeypatch.setattr(module, "full_softmax_loss", _plain)
    expected, expected_grads = loss_and_grads(model)
    assert loss == pytest.approx(expected, rel=1e-5)
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], rtol=1e-4, atol=1e-6, msg=key)
    return grads


@pytest.mark.parametrize("name,module", [("sasrec", sasrec), ("sasrecm", sasrec), ("cl4srec", sasrec),
                                         ("gru4rec", sasrec), ("unisrec", unisrec), ("mp4sr", mp4sr)])
def test_models_without_history_negatives_leave_the_seen_items_out_of_the_softmax(name, module, monkeypatch):
    torch.manual_seed(0)
    context = ModelContext(N_ITEMS, max_len=10, features=_features())
    default = build_model(name, {"hidden": 16}, context)
    model = build_model(name, {"hidden": 16, "history_negatives": False}, context)
    batch = _batch()
    assert (seen_items(batch) >= 0).any()
    _lower_loss_of_the_plain_form(model, default, batch, module, monkeypatch)


@pytest.mark.parametrize("name,module", [("sasrec", sasrec), ("sasrecm", sasrec), ("gru4rec", sasrec),
                                         ("unisrec", unisrec), ("mp4sr", mp4sr)])
def test_models_without_untrained_negatives_leave_the_untrained_items_out_of_the_softmax(name, module, monkeypatch):
    """Items with no training interaction get -inf in every row's softmax: a lower loss, the loss of
    the plain form with that bias, and no gradient through their rows of the output table."""
    torch.manual_seed(0)
    batch = _batch()
    counts = torch.zeros(N_ITEMS, dtype=torch.long)
    counts[batch.targets[batch.targets != IGNORE]] = 1
    counts[(batch.tokens[batch.tokens > 0] - 1)] = 1
    untrained = (counts == 0).nonzero().squeeze(1)
    assert len(untrained) > 5
    context = ModelContext(N_ITEMS, max_len=10, item_counts=counts.numpy(), features=_features())
    default = build_model(name, {"hidden": 16}, context)
    model = build_model(name, {"hidden": 16, "untrained_negatives": False}, context)
    grads = _lower_loss_of_the_plain_form(model, default, batch, module, monkeypatch)
    table = "id_embedding.weight" if name in ("unisrec", "mp4sr") else "item_embedding.weight"
    if table in grads:  # the untrained items' own rows: nothing reaches them
        offset = 0 if name in ("unisrec", "mp4sr") else 1
        assert grads[table][untrained + offset].abs().max() == 0
    if name in ("unisrec", "mp4sr"):  # and their ID embeddings start at zero: content alone
        fresh = build_model(name, {"hidden": 16, "untrained_negatives": False}, context)
        assert fresh.id_embedding.weight[untrained].abs().max() == 0
        assert fresh.id_embedding.weight[counts > 0].abs().min() > 0


def test_untrained_negatives_need_the_full_softmax_and_counts():
    with pytest.raises(ConfigError, match="loss=full"):
        build_model("sasrec", {"loss": "sampled", "untrained_negatives": False}, ModelContext(10))
    model = build_model("sasrec", {"untrained_negatives": False}, ModelContext(10))  # no counts: nothing to leave out
    assert model.negatives_bias is None
