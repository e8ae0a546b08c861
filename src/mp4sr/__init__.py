"""mp4sr: multimodal pre-training for sequential recommendation."""

from mp4sr.errors import MP4SRError, DataError

__version__ = "0.1.0"
__all__ = ["MP4SRError", "DataError", "__version__"]
