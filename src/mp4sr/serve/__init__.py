"""Serving: the Recommender (Python API), the HTTP app, and the functions behind the CLI commands.

    rec = Recommender.load("runs/train-.../best.pt")
    rec.recommend(["B00004Z6I8", "B0006OB3KS"], k=10)      # [(item id, score), ...]
    rec.add_items([{"id": "NEW1", "text": "...", "image_path": "new1.jpg"}])  # content models only

FastAPI and uvicorn (the 'serve' extra) are imported only by the HTTP parts.
"""

from mp4sr.serve.errors import DuplicateItemsError, UnknownItemsError, UnsupportedError
from mp4sr.serve.new_items import NewItem
from mp4sr.serve.recommender import POPULARITY, Recommendation, Recommender

__all__ = ["Recommender", "Recommendation", "NewItem", "POPULARITY", "UnknownItemsError", "DuplicateItemsError",
           "UnsupportedError"]
