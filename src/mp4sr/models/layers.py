"""Building blocks shared by the transformer models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT / RecBole initialisation: N(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def initialise(model: nn.Module, scheme: str = "normal") -> None:
    """A transformer model's initialisation (``params.init``): 'normal' is :func:`init_weights` on every
    module (BERT's and RecBole's); 'xavier' then draws every weight matrix (embedding tables, positions,
    attention and feed-forward weights) from Xavier's normal distribution, as RecTools does on training
    start. Biases and LayerNorms keep the 'normal' values; padding rows stay zero."""
    if scheme not in ("normal", "xavier"):
        raise ValueError(f"init must be 'normal' or 'xavier', not {scheme!r}")
    model.apply(init_weights)
    if scheme == "normal":
        return
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                nn.init.xavier_normal_(param)
        for module in model.modules():
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()


class SASRecBlock(nn.Module):
    """The original SASRec layer (Kang & McAuley's code, RecTools' ``SASRecTransformerLayer``): the query
    is normalised, keys and values are not, and both residuals add the normalised input::

        q = LN(x); x = q + MHA(q, x, x); y = LN(x); x = y + Dropout(FFN(y)),  FFN = Linear-ReLU-Dropout-Linear

    There is no dropout on the attention output (only on its weights). Padding positions are zeroed
    after the layer.

    ``sink``: [B] how many padding slots each sequence's positions also attend to. RecTools pads every
    sequence on the left to ``max_len`` and masks no key, so a sequence of n items has max_len - n
    zero inputs before its first item, each with key ``b_k`` and value ``b_v`` (the attention's input
    biases): together one more key with multiplicity max_len - n, which takes attention away from the
    items the shorter a sequence is. Computed here as that one key with log(multiplicity) added to
    its score."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, attn_dropout: float,
                 ffn_dropout: float, layer_norm_eps: float):
        super().__init__()
        self.q_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=attn_dropout, batch_first=True)
        self.ff_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.feed_forward = nn.Sequential(nn.Linear(hidden, ffn), nn.ReLU(), nn.Dropout(ffn_dropout), nn.Linear(ffn, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, padding: torch.Tensor | None,
                sink: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q_norm(x)
        if sink is None:
            attended = self.self_attn(q, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0]
        else:
            attended = self._attend_with_sink(q, x, mask, padding, sink)
        x = q + attended
        y = self.ff_norm(x)
        x = y + self.dropout(self.feed_forward(y))
        return x if padding is None else x.masked_fill(padding[..., None], 0.0)

    def _attend_with_sink(self, q, x, mask, padding, sink):
        attn = self.self_attn
        B, L, H = x.shape
        heads, d = attn.num_heads, H // attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        split = lambda t: t.view(B, L, heads, d).transpose(1, 2)  # noqa: E731  [B, heads, L, d]
        qh = split(F.linear(q, w[:H], b[:H]))
        kh, vh = split(F.linear(x, w[H:2 * H], b[H:2 * H])), split(F.linear(x, w[2 * H:], b[2 * H:]))
        scores = qh @ kh.transpose(-1, -2) / d ** 0.5  # [B, heads, L, L]
        if mask is not None:
            scores = scores + mask
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        sink_key, sink_value = b[H:2 * H].view(heads, d), b[2 * H:].view(heads, d)
        multiplicity = sink.to(x.dtype).log()[:, None, None]  # log 0 = -inf: no sink
        sink_scores = (qh * sink_key[None, :, None, :]).sum(-1) / d ** 0.5 + multiplicity  # [B, heads, L]
        weights = torch.softmax(torch.cat([scores, sink_scores[..., None]], dim=-1), dim=-1)
        weights = F.dropout(weights, attn.dropout, self.training)
        out = weights[..., :L] @ vh + weights[..., L:] * sink_value[None, :, None, :]
        return attn.out_proj(out.transpose(1, 2).reshape(B, L, H))


class CausalTransformer(nn.Module):
    """Learned positions, then a left-to-right (causal) transformer, in one of two forms:
    post-LN (``norm_first=False``, RecBole's): LayerNorm and dropout of the input, then post-LN layers;
    pre-LN (``norm_first=True``, the original SASRec's and RecTools'): dropout of the input, pre-LN
    layers, then a final LayerNorm. Both keep the one LayerNorm as ``norm``.

    Sequences are right-padded: under the causal mask no real position ever attends to padding, so
    the outputs at real positions do not depend on how much padding a batch has.

    ``positions``: 'forward' numbers a sequence's items from its first (RecBole's); 'from_end' from its
    last, so that the most recent item always has position 0 (what the original SASRec's left padding
    and RecTools' inverse positions give).

    ``block``: 'standard' is PyTorch's transformer layer in the form ``norm_first`` picks (GELU
    feed-forward); 'sasrec' is :class:`SASRecBlock` (ReLU feed-forward), with dropout of the input and
    a final LayerNorm as in the pre-LN form (``norm_first`` must then be true). ``padding_sink`` (with
    'sasrec'): every position also attends to the padding a left padding to ``max_len`` would give
    (RecTools' SASRec), see :class:`SASRecBlock`.
    """

    def __init__(
        self, hidden: int = 64, layers: int = 2, heads: int = 2, ffn: int = 256, dropout: float = 0.2,
        max_len: int = 50, attn_dropout: float | None = None, layer_norm_eps: float = 1e-12,
        ffn_dropout: float | None = None, norm_first: bool = False, positions: str = "forward",
        block: str = "standard", padding_sink: bool = False,
    ):
        super().__init__()
        if positions not in ("forward", "from_end"):
            raise ValueError(f"positions must be 'forward' or 'from_end', not {positions!r}")
        if block not in ("standard", "sasrec"):
            raise ValueError(f"block must be 'standard' or 'sasrec', not {block!r}")
        if block == "sasrec" and not norm_first:
            raise ValueError("block 'sasrec' is a pre-LN layer: set norm_first=true with it")
        if padding_sink and block != "sasrec":
            raise ValueError("padding_sink is a form of block 'sasrec': set block='sasrec' with it")
        self.from_end = positions == "from_end"
        self.max_len = max_len
        self.position = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first
        self.block = block
        self.padding_sink = padding_sink
        if block == "sasrec":  # a list of SASRecBlock, in place of PyTorch's encoder
            self.encoder = nn.ModuleList(
                SASRecBlock(hidden, heads, ffn, dropout, dropout if attn_dropout is None else attn_dropout,
                            dropout if ffn_dropout is None else ffn_dropout, layer_norm_eps)
                for _ in range(layers))
        else:
            self.encoder = self._standard(hidden, layers, heads, ffn, dropout, attn_dropout, ffn_dropout,
                                          layer_norm_eps, norm_first)

    @staticmethod
    def _standard(hidden, layers, heads, ffn, dropout, attn_dropout, ffn_dropout, layer_norm_eps, norm_first):
        """PyTorch's encoder of ``layers`` layers (GELU feed-forward, post-LN or pre-LN)."""
        layer = nn.TransformerEncoderLayer(
            hidden, heads, ffn, dropout, activation="gelu", batch_first=True, layer_norm_eps=layer_norm_eps,
            norm_first=norm_first,
        )
        if attn_dropout is not None:
            layer.self_attn.dropout = attn_dropout
        if ffn_dropout is not None:  # between the FFN's two linear layers (RecBole has none there)
            layer.dropout = nn.Dropout(ffn_dropout)
        return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    @classmethod
    def from_config(cls, config, max_len: int) -> "CausalTransformer":
        """The transformer of a model config: every transformer model names its settings alike, with
        ``hidden``, ``layers``, ``heads``, ``ffn`` (inner size), ``dropout`` (embeddings, residuals),
        ``attn_dropout`` (attention weights), ``ffn_dropout`` (inside the FFN; None: ``dropout``) and
        ``norm_first`` (pre-LN or post-LN), ``positions`` (numbered from the first or the last item) and
        ``block`` (PyTorch's layer or the original SASRec's)."""
        return cls(config.hidden, config.layers, config.heads, config.ffn, config.dropout, max_len,
                   attn_dropout=config.attn_dropout, ffn_dropout=config.ffn_dropout, norm_first=config.norm_first,
                   positions=config.positions, block=config.block, padding_sink=config.padding_sink)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None,
                padding: torch.Tensor | None = None, causal: bool = True,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, H] item representations (padding rows zero); extra: added to them with the
        positions; padding: [B, L] true at positions nobody may attend to; causal=False: every
        position attends to every other (BERT4Rec); lengths: [B] real items of each sequence (needed
        with positions from the end, else taken from ``padding``)."""
        length = x.shape[1]
        if self.from_end:
            if lengths is None:
                if padding is None:
                    raise ValueError("positions from the end need the sequences' lengths (or padding)")
                lengths = (~padding).sum(dim=1)
            steps = torch.arange(length, device=x.device)
            h = x + self.position((lengths.to(x.device)[:, None] - 1 - steps[None]).clamp(min=0))
        else:
            h = x + self.position.weight[:length][None]
        if extra is not None:
            h = h + extra
        mask = torch.triu(torch.full((length, length), float("-inf"), device=x.device), diagonal=1) if causal else None
        if self.block == "sasrec":
            sink = None
            if self.padding_sink:  # the zero inputs a left padding to max_len would put before each sequence
                if lengths is None:
                    lengths = torch.full((x.shape[0],), length) if padding is None else (~padding).sum(dim=1)
                sink = (self.max_len - lengths.to(x.device)).clamp(min=0)
            h = self.dropout(h)
            for layer in self.encoder:
                h = layer(h, mask, padding, sink)
            return self.norm(h)
        if self.norm_first:
            return self.norm(self.encoder(self.dropout(h), mask=mask, src_key_padding_mask=padding, is_causal=causal))
        return self.encoder(self.dropout(self.norm(h)), mask=mask, src_key_padding_mask=padding, is_causal=causal)


def last_positions(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, H] hidden state at each sequence's last real position."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
