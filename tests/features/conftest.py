"""Fixtures of the feature tests: an isolated cache per test, models loaded once per session, a fake
text encoder for the mechanics (chunks, resume, shards), and tiny random CLIP / BERT models."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network for weights

from mp4sr.features import TextEncoder  # noqa: E402
from mp4sr.paths import CACHE_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test writes its stores under its own tmp folder (never ~/.cache, never the data)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache shared by the session's expensive stores (hm-sample text and images)."""
    return tmp_path_factory.mktemp("session-cache")


class FakeTextEncoder(TextEncoder):
    """Deterministic vectors from a hash of the text; records what it was asked to encode."""

    name = "fake"
    fingerprint = "fake-v1"

    def __init__(self, dim: int = 8, fail_on: str | None = None):
        self.dim, self.fail_on, self.calls = dim, fail_on, []

    def encode(self, texts, batch_size=64):
        self.calls.append(list(texts))
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        out = np.stack([np.random.default_rng(s).standard_normal(self.dim) for s in seeds]).astype(np.float32)
        out[[t == self.fail_on for t in texts]] = np.nan
        return out

    @property
    def n_encoded(self) -> int:
        return sum(map(len, self.calls))


@pytest.fixture
def fake_encoder() -> FakeTextEncoder:
    return FakeTextEncoder()


@pytest.fixture
def make_fake_encoder():
    return FakeTextEncoder


@pytest.fixture(scope="session")
def minilm():
    from mp4sr.features import load_text_encoder

    encoder = load_text_encoder()
    _ = encoder.model  # load now, once per session
    return encoder


@pytest.fixture(scope="session")
def hm(shared_data):
    from mp4sr.features import load_items

    return load_items(shared_data / "hm-sample")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (2 layers, 32-d) saved with its processor, loaded by path like a real one."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    out = tmp_path_factory.mktemp("tiny-clip")
    chars = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate([*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised BERT (plain HF encoder, no sentence-transformers config) with a character vocab."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,"]
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(out / "vocab.txt")).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture
def write_jpeg():
    """write_jpeg(path, colour) -> path of a small solid-colour JPEG."""
    from PIL import Image

    def write(path: Path, colour=(200, 30, 30), size=(48, 64)) -> Path:
        Image.new("RGB", size, colour).save(path, format="JPEG")
        return path

    return write
