"""Serving: the Recommender (Python API), the HTTP app, and the functions behind the CLI commands.

    rec = Recommender.load("model")                        # an exported model folder, or a run folder
    rec.recommend(["B00V3J8JEG", "B00J0GMMP6"], k=10)      # [(item id, score), ...]
    rec.add_items([{"id": "NEW1", "text": "...", "image_path": "new1.jpg"}])  # content models only

FastAPI and uvicorn (the 'serve' extra) are imported only by the HTTP parts.
"""

from mp4sr.serve.errors import DuplicateItemsError, UnknownItemsError, UnsupportedError
from mp4sr.serve.new_items import NewItem
from mp4sr.serve.recommender import POPULARITY, Recommendation, Recommender

__all__ = ["Recommender", "Recommendation", "NewItem", "POPULARITY", "UnknownItemsError", "DuplicateItemsError",
           "UnsupportedError"]
