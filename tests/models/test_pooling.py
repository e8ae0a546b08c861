"""Attention pooling: the paper's linear score against the non-linear (RecBole) one."""

import pytest
import torch

from mp4sr.models import ModelContext, build_model
from mp4sr.models.items import AttentionPooling, ItemTable

TARGET = torch.tensor([0.45, 0.45, 0.10])  # x and -x both above the zero vector


def _mirrored(n=32, dim=8):
    """Items whose three vectors are x, -x and 0."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    return torch.stack([x, -x, torch.zeros_like(x)], dim=1), torch.ones(n, 3, dtype=torch.bool)


def _fit(scorer: str) -> torch.Tensor:
    """Gradient descent of the pooling weights towards TARGET (one thread: tiny tensors on a busy CPU)."""
    torch.manual_seed(0)
    pool = AttentionPooling(8, 16, scorer)
    vectors, mask = _mirrored()
    opt = torch.optim.Adam(pool.parameters(), lr=3e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(150):
            opt.zero_grad()
            ((pool.weights(vectors, mask) - TARGET) ** 2).sum(-1).mean().backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return pool.weights(vectors, mask).detach()


def test_only_the_nonlinear_score_can_weight_x_and_minus_x_above_zero():
    mlp, linear = _fit("mlp"), _fit("linear")
    assert (mlp - TARGET).abs().mean() < 0.03 and (mlp - TARGET).abs().max() < 0.1
    assert ((mlp[:, 0] > mlp[:, 2]) & (mlp[:, 1] > mlp[:, 2])).all()
    # a linear score gives x and -x scores c + a and c - a around the zero vector's c: one is at most c
    assert (torch.minimum(linear[:, 0], linear[:, 1]) <= linear[:, 2] + 1e-6).all()
    assert (linear - TARGET).abs().max() > 0.15  # so some weight is >= 0.175 off (a0 = a2 = 0.275 at best)


def test_linear_score_is_the_papers_formula():
    torch.manual_seed(1)
    pool = AttentionPooling(5, 4)
    x, mask = torch.randn(3, 4, 5), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    logits = (x @ pool.proj.weight.T + pool.proj.bias) @ pool.score.weight.T + pool.score.bias
    alpha = torch.softmax(logits.squeeze(-1).masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(pool(x, mask), (alpha.unsqueeze(-1) * x).sum(1))
    assert pool(x, mask)[2].abs().sum() == 0  # an item without vectors pools to zero


@pytest.mark.parametrize("model", ["mp4sr", "unisrec", "fdsa"])
def test_scorers_share_the_weights_so_checkpoints_load_under_either(model):
    g = torch.Generator().manual_seed(0)
    tables = {"text": ItemTable(torch.randn(10, 3, 6, generator=g), torch.ones(10, 3, dtype=torch.bool)),
              "image": ItemTable(torch.randn(10, 1, 6, generator=g), torch.ones(10, 1, dtype=torch.bool))}
    context = ModelContext(10, max_len=5, features=tables)
    small = {"hidden": 8, "ffn": 16}
    default = build_model(model, small, context)
    mlp = build_model(model, {**small, "pool_scorer": "mlp"}, context)
    assert default.config.pool_scorer == "linear"
    assert list(default.state_dict()) == list(mlp.state_dict())
    mlp.load_state_dict(default.state_dict())
    pools = [m for m in mlp.modules() if isinstance(m, AttentionPooling)]
    assert pools and all(p.nonlinear for p in pools)


@pytest.mark.parametrize("settings", [{"pooling": "attention", "pool_scorer": "linear"},
                                      {"pooling": "attention", "pool_scorer": "mlp"},
                                      {"pooling": "mean"}])
def test_one_vector_per_item_is_its_own_pooling(settings):
    """With one vector per item the encoder skips the pooling: the output is the pooled path's, exactly,
    for items with the vector and for items without it (the learned 'missing' input)."""
    from mp4sr.models.items import ContentEncoder
    from mp4sr.models.mp4sr import MP4SRConfig

    torch.manual_seed(0)
    encoder = ContentEncoder(6, 8, MP4SRConfig(**settings)).eval()
    torch.nn.init.normal_(encoder.missing)
    g = torch.Generator().manual_seed(1)
    table = ItemTable(torch.randn(10, 1, 6, generator=g), torch.rand(10, 1, generator=g) > 0.3)
    assert not table.mask.all() and table.mask.any()
    pooled = encoder.pool(table.vectors, table.mask)
    inputs = torch.where(table.mask.any(-1, keepdim=True), pooled, encoder.missing)
    assert torch.equal(encoder(table), encoder.adaptor(inputs))
    items = torch.tensor([3, 0, 3, 9])
    assert torch.equal(encoder(table, items), encoder.adaptor(inputs[items]))
