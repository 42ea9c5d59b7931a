"""twostage: off-policy learning in two-stage recommender systems (Ma et al., WWW 2020)."""

from __future__ import annotations

__version__ = "0.1.0"

from twostage.errors import (
    ConfigError,
    DataFormatError,
    DownloadError,
    NumericsError,
    TwoStageError,
)

__all__ = [
    "__version__",
    "ConfigError",
    "DataFormatError",
    "DownloadError",
    "NumericsError",
    "TwoStageError",
]
