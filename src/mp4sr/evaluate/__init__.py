"""Full-ranking evaluation and metrics."""

from mp4sr.evaluate.metrics import DEFAULT_KS, mean_metrics, metrics_from_ranks, target_ranks
from mp4sr.evaluate.ranking import RankingResult, full_ranking, topk_items

__all__ = ["DEFAULT_KS", "RankingResult", "full_ranking", "mean_metrics", "metrics_from_ranks", "target_ranks", "topk_items"]
