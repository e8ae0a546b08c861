"""The transformer models share their settings' names and meanings; the content models switch the ID part."""

import pytest
import torch

from mp4sr.data.batching import IGNORE, SequenceBatch
from mp4sr.errors import ConfigError
from mp4sr.models import ModelContext, build_model
from mp4sr.models.layers import CausalTransformer
from mp4sr.models.items import ItemTable

TRANSFORMER_MODELS = ["mp4sr", "unisrec", "sasrec", "sasrecm", "fdsa", "bert4rec", "cl4srec"]
N_ITEMS = 12
SETTINGS = {"hidden": 12, "layers": 3, "heads": 3, "ffn": 20, "dropout": 0.1, "attn_dropout": 0.3, "ffn_dropout": 0.4}


def _context():
    g = torch.Generator().manual_seed(0)
    tables = {"text": ItemTable(torch.randn(N_ITEMS, 2, 6, generator=g), torch.ones(N_ITEMS, 2, dtype=torch.bool)),
              "image": ItemTable(torch.randn(N_ITEMS, 1, 5, generator=g), torch.ones(N_ITEMS, 1, dtype=torch.bool))}
    return ModelContext(N_ITEMS, max_len=6, features=tables)


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_every_transformer_model_takes_the_same_settings(name):
    model = build_model(name, SETTINGS, _context())
    transformers = [m for m in model.modules() if isinstance(m, CausalTransformer)]
    assert transformers
    for t in transformers:
        assert t.position.embedding_dim == 12 and len(t.encoder.layers) == 3 and t.dropout.p == 0.1
        for layer in t.encoder.layers:
            assert layer.self_attn.num_heads == 3 and layer.linear1.out_features == 20
            assert layer.self_attn.dropout == 0.3 and layer.dropout.p == 0.4 and layer.dropout1.p == 0.1


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_unset_inner_dropouts_mean_dropout_or_the_models_own_default(name):
    model = build_model(name, {"hidden": 8, "ffn": 16, "dropout": 0.15}, _context())
    defaults = type(model.config)()
    for layer in next(m for m in model.modules() if isinstance(m, CausalTransformer)).encoder.layers:
        assert layer.dropout.p == 0.15  # ffn_dropout: None everywhere by default
        assert layer.self_attn.dropout == (0.15 if defaults.attn_dropout is None else defaults.attn_dropout)


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_norm_first_makes_every_transformer_pre_ln_with_the_same_weights(name):
    post = build_model(name, {"hidden": 8, "ffn": 16}, _context())
    pre = build_model(name, {"hidden": 8, "ffn": 16, "norm_first": True}, _context())
    assert list(pre.state_dict()) == list(post.state_dict())  # checkpoints of either form load alike
    for flag, model in ((False, post), (True, pre)):
        for t in (m for m in model.modules() if isinstance(m, CausalTransformer)):
            assert t.norm_first is flag and all(layer.norm_first is flag for layer in t.encoder.layers)


def test_pre_ln_ends_in_the_layer_norm_and_post_ln_starts_with_it():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8) * 3 + 1
    post, pre = CausalTransformer(8, 2, 2, 16, 0.0, 5), CausalTransformer(8, 2, 2, 16, 0.0, 5, norm_first=True)
    pre.load_state_dict(post.state_dict())
    out = pre.eval()(x)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(out, (8,), eps=1e-12), atol=1e-5, rtol=0)
    layers_only = pre.encoder(x + pre.position.weight[:5][None], mask=torch.triu(torch.full((5, 5), float("-inf")), 1))
    torch.testing.assert_close(out, pre.norm(layers_only))
    normed = post.norm(x + post.position.weight[:5][None])
    torch.testing.assert_close(post.eval()(x), post.encoder(normed, mask=torch.triu(torch.full((5, 5), float("-inf")), 1)))
    assert not torch.allclose(out, post(x), atol=1e-3)
    # causally: the outputs at a position never depend on later positions, in either form
    later = x.clone()
    later[:, 3:] += 5
    for t in (pre, post):
        torch.testing.assert_close(t(later)[:, :3], t(x)[:, :3])


def _batch():
    tokens = torch.tensor([[1, 2, 3], [4, 5, 0]])
    targets = torch.tensor([[1, 2, 3], [4, 5, IGNORE]])
    return SequenceBatch(tokens, torch.tensor([3, 2]), torch.arange(2), targets=targets)


@pytest.mark.parametrize("name", ["mp4sr", "unisrec", "sasrecm"])
def test_content_models_train_without_item_ids(name):
    model = build_model(name, {"hidden": 8, "ffn": 16, "id_embedding": False}, _context())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("id_embedding" in n or "item_embedding" in n for n in trained)
    model.calculate_loss(_batch()).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert build_model(name, {"hidden": 8, "ffn": 16}, _context()).config.id_embedding  # transductive by default


def test_fdsa_needs_its_id_embeddings():
    with pytest.raises(ConfigError, match="id_embedding"):
        build_model("fdsa", {"id_embedding": False}, _context())


@pytest.mark.filterwarnings("ignore:Support for mismatched src_key_padding_mask")  # a bool padding, a float causal mask
def test_positions_from_the_end_give_the_latest_item_position_zero():
    """From the end, a sequence of n items reads the position table backwards from row n-1 to row 0:
    the forward form with that table reversed, sequence by sequence, whatever the padding."""
    torch.manual_seed(0)
    end, forward = CausalTransformer(8, 2, 2, 16, 0.0, 5, positions="from_end"), CausalTransformer(8, 2, 2, 16, 0.0, 5)
    forward.load_state_dict(end.state_dict())
    end.eval(), forward.eval()
    x = torch.randn(2, 5, 8)
    x[1, 3:] = 0  # the second sequence has 3 items, then padding
    out = end(x, lengths=torch.tensor([5, 3]))
    for row, n in ((0, 5), (1, 3)):
        with torch.no_grad():
            forward.position.weight[:n] = end.position.weight[:n].flip(0)
        torch.testing.assert_close(out[row, :n], forward(x[row : row + 1, :n])[0])
    assert not torch.allclose(out[0], CausalTransformer(8, 2, 2, 16, 0.0, 5).eval()(x[:1])[0], atol=1e-3)
    torch.testing.assert_close(end(x, padding=torch.tensor([[False] * 5, [False] * 3 + [True] * 2]))[:, :3], out[:, :3])
    with pytest.raises(ValueError, match="lengths"):
        end(x)


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_every_transformer_model_numbers_positions_from_the_end_when_asked(name):
    model = build_model(name, {"hidden": 8, "ffn": 16, "positions": "from_end"}, _context())
    assert all(t.from_end for t in model.modules() if isinstance(t, CausalTransformer))
    loss = model.calculate_loss(_batch())
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["sasrec", "sasrecm", "cl4srec", "mp4sr"])
def test_item_dropout_drops_the_scoring_table_while_training_only(name):
    torch.manual_seed(0)
    plain = build_model(name, {"hidden": 8, "ffn": 16, "dropout": 0.0, "attn_dropout": 0.0}, _context())
    dropped = build_model(name, {"hidden": 8, "ffn": 16, "dropout": 0.0, "attn_dropout": 0.0, "item_dropout": 0.5},
                          _context())
    dropped.load_state_dict(plain.state_dict())
    if name == "cl4srec":  # its contrastive views are random by design; compare the next-item part alone
        plain.config.cl_weight = dropped.config.cl_weight = 0.0
    if name == "mp4sr":  # the fine-tuning's loss, without the mixup's random draws
        for model in (plain, dropped):
            model.config.stage, model.config.mixup = "finetune", False
    plain.train(), dropped.train()
    batch = _batch()
    base = plain.calculate_loss(batch)
    assert not torch.allclose(dropped.calculate_loss(batch), base)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped.calculate_loss(batch), plain.calculate_loss(batch))


def test_the_sasrec_block_normalises_the_query_and_not_the_keys_and_values():
    """One layer of block 'sasrec', written out: q = LN(x); x = q + MHA(q, x, x); y = LN(x); y + FFN(y)
    with a ReLU feed-forward, then the final LayerNorm; PyTorch's pre-LN layer computes another function."""
    torch.manual_seed(0)
    t = CausalTransformer(8, 1, 2, 16, 0.0, 5, norm_first=True, block="sasrec").eval()
    for p in t.parameters():  # LayerNorms away from the identity, so that normalising or not shows
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 5, 8) * 2 + 1
    h = x + t.position.weight[:5][None]
    layer = t.encoder[0]
    mask = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    q = layer.q_norm(h)
    h = q + layer.self_attn(q, h, h, attn_mask=mask, need_weights=False)[0]
    y = layer.ff_norm(h)
    ffn = layer.feed_forward
    y = y + ffn[3](torch.relu(ffn[0](y)))
    torch.testing.assert_close(t(x), t.norm(y))
    # keys and values normalised instead: a different output
    h = x + t.position.weight[:5][None]
    q = layer.q_norm(h)
    wrong = q + layer.self_attn(q, q, q, attn_mask=mask, need_weights=False)[0]
    wrong = layer.ff_norm(wrong)
    wrong = wrong + ffn[3](torch.relu(ffn[0](wrong)))
    assert not torch.allclose(t(x), t.norm(wrong), atol=1e-3)
    later = x.clone()
    later[:, 3:] += 5
    torch.testing.assert_close(t(later)[:, :3], t(x)[:, :3])  # causal


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_every_transformer_model_trains_with_the_sasrec_block(name):
    model = build_model(name, {"hidden": 8, "ffn": 16, "norm_first": True, "block": "sasrec"}, _context())
    transformers = [m for m in model.modules() if isinstance(m, CausalTransformer)]
    assert transformers and all(t.block == "sasrec" and len(t.encoder) == 2 for t in transformers)
    loss = model.calculate_loss(_batch())
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="norm_first"):
        build_model(name, {"hidden": 8, "ffn": 16, "block": "sasrec"}, _context())


@pytest.mark.parametrize("name", ["sasrec", "mp4sr"])
def test_xavier_init_draws_weight_matrices_at_their_fan_and_keeps_padding_zero(name):
    torch.manual_seed(0)
    normal = build_model(name, {"hidden": 32, "ffn": 64}, _context())
    xavier = build_model(name, {"hidden": 32, "ffn": 64, "init": "xavier"}, _context())
    position = dict(xavier.named_parameters())["transformer.position.weight"]  # [6, 32]
    assert position.std().item() == pytest.approx((2 / (6 + 32)) ** 0.5, rel=0.25)
    assert dict(normal.named_parameters())["transformer.position.weight"].std().item() == pytest.approx(0.02, rel=0.25)
    for module in xavier.modules():
        if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
            assert not module.weight[module.padding_idx].any()
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            assert not module.bias.any()
    with pytest.raises(ConfigError, match="init"):
        build_model(name, {"init": "uniform"}, _context())


@pytest.mark.parametrize("name", ["sasrec", "sasrecm"])
def test_item_dropout_of_the_input_drops_the_input_items_with_the_scoring_table(name):
    settings = {"hidden": 8, "ffn": 16, "dropout": 0.0, "attn_dropout": 0.0, "item_dropout": 0.5}
    scoring = build_model(name, settings, _context())
    both = build_model(name, {**settings, "item_dropout_input": True}, _context())
    both.load_state_dict(scoring.state_dict())
    scoring.train(), both.train()
    torch.manual_seed(1)
    dropped_scoring = scoring.calculate_loss(_batch())
    torch.manual_seed(1)
    assert not torch.allclose(both.calculate_loss(_batch()), dropped_scoring)
    scoring.eval(), both.eval()
    torch.testing.assert_close(both.calculate_loss(_batch()), scoring.calculate_loss(_batch()))


def test_fdsa_refuses_input_item_dropout():
    with pytest.raises(ConfigError, match="item_dropout_input"):
        build_model("fdsa", {"item_dropout": 0.2, "item_dropout_input": True}, _context())


def test_the_padding_sink_is_attention_to_a_left_padding_of_zero_inputs():
    """A SASRec layer with the sink over n items equals the same layer over the items left-padded with
    zero inputs to max_len, with no padding key masked (RecTools' form), at the items' positions."""
    from mp4sr.models.layers import SASRecBlock

    torch.manual_seed(0)
    layer = SASRecBlock(8, 2, 16, 0.0, 0.0, 0.0, 1e-8).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)  # biases matter here: they are the padding's keys and values
    n, max_len = 3, 7
    x = torch.randn(2, n, 8)
    causal = lambda size: torch.triu(torch.full((size, size), float("-inf")), diagonal=1)  # noqa: E731
    out = layer(x, causal(n), None, sink=torch.tensor([max_len - n, 0]))
    padded = torch.cat([torch.zeros(1, max_len - n, 8), x[:1]], dim=1)
    torch.testing.assert_close(out[0], layer(padded, causal(max_len), None)[0, max_len - n:])
    torch.testing.assert_close(out[1], layer(x[1:], causal(n), None)[0])  # a full sequence: no sink
    assert not torch.allclose(out[0], layer(x[:1], causal(n), None)[0], atol=1e-3)


def test_the_padding_sink_follows_each_sequences_length_and_needs_the_sasrec_block():
    torch.manual_seed(0)
    model = build_model("sasrec", {"hidden": 8, "ffn": 16, "norm_first": True, "block": "sasrec",
                                   "padding_sink": True}, _context())
    assert all(t.padding_sink for t in model.modules() if isinstance(t, CausalTransformer))
    batch = _batch()
    model.eval()
    alone = SequenceBatch(batch.tokens[1:, :2], torch.tensor([2]), torch.arange(1), targets=batch.targets[1:, :2])
    torch.testing.assert_close(model.user_vectors(batch)[1:], model.user_vectors(alone))  # not the batch's padding
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="padding_sink"):
        build_model("sasrec", {"norm_first": True, "padding_sink": True}, _context())
