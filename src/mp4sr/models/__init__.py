"""Models behind one interface; importing this package registers them all."""

from mp4sr.models import bert4rec, cl4srec, fdsa, gru4rec, mp4sr, pop, sasrec, sasrecm, unisrec  # noqa: F401  (registration)
from mp4sr.models.base import REGISTRY, ModelConfig, ModelContext, SequentialRecommender, build_model, model_class
from mp4sr.models.items import ItemTable

# The models the commands use when none is named: `mp4sr train` (``RunConfig.model``), and `mp4sr pretrain`,
# `finetune` and `run`, whose model must be pre-trainable (it is also an experiment's default reference).
DEFAULT_MODEL = "sasrec"
DEFAULT_PRETRAINABLE = "mp4sr"

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINABLE", "REGISTRY", "ItemTable", "ModelConfig", "ModelContext",
           "SequentialRecommender", "build_model", "model_class"]
