"""Building blocks shared by the transformer models."""

from __future__ import annotations

import torch
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
    """

    def __init__(
        self, hidden: int = 64, layers: int = 2, heads: int = 2, ffn: int = 256, dropout: float = 0.2,
        max_len: int = 50, attn_dropout: float | None = None, layer_norm_eps: float = 1e-12,
        ffn_dropout: float | None = None, norm_first: bool = False, positions: str = "forward",
    ):
        super().__init__()
        if positions not in ("forward", "from_end"):
            raise ValueError(f"positions must be 'forward' or 'from_end', not {positions!r}")
        self.from_end = positions == "from_end"
        self.position = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first
        layer = nn.TransformerEncoderLayer(
            hidden, heads, ffn, dropout, activation="gelu", batch_first=True, layer_norm_eps=layer_norm_eps,
            norm_first=norm_first,
        )
        if attn_dropout is not None:
            layer.self_attn.dropout = attn_dropout
        if ffn_dropout is not None:  # between the FFN's two linear layers (RecBole has none there)
            layer.dropout = nn.Dropout(ffn_dropout)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.max_len = max_len

    @classmethod
    def from_config(cls, config, max_len: int) -> "CausalTransformer":
        """The transformer of a model config: every transformer model names its settings alike, with
        ``hidden``, ``layers``, ``heads``, ``ffn`` (inner size), ``dropout`` (embeddings, residuals),
        ``attn_dropout`` (attention weights), ``ffn_dropout`` (inside the FFN; None: ``dropout``) and
        ``norm_first`` (pre-LN or post-LN) and ``positions`` (numbered from the first or the last item)."""
        return cls(config.hidden, config.layers, config.heads, config.ffn, config.dropout, max_len,
                   attn_dropout=config.attn_dropout, ffn_dropout=config.ffn_dropout, norm_first=config.norm_first,
                   positions=config.positions)

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
        if self.norm_first:
            return self.norm(self.encoder(self.dropout(h), mask=mask, src_key_padding_mask=padding, is_causal=causal))
        return self.encoder(self.dropout(self.norm(h)), mask=mask, src_key_padding_mask=padding, is_causal=causal)


def last_positions(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, H] hidden state at each sequence's last real position."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
