"""Models behind one interface; importing this package registers them all."""

from mp4sr.models import bert4rec, cl4srec, fdsa, gru4rec, mp4sr, pop, sasrec, sasrecm, unisrec  # noqa: F401  (registration)
from mp4sr.models.base import REGISTRY, ModelConfig, ModelContext, SequentialRecommender, build_model, model_class
from mp4sr.models.mp4sr import ItemTable

__all__ = ["REGISTRY", "ItemTable", "ModelConfig", "ModelContext", "SequentialRecommender", "build_model", "model_class"]
