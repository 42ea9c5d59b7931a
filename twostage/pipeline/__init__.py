"""The experiment: cached stages 1–5, the candidate-generator runs, sweeps, off-policy evaluation.

`from twostage.pipeline import reproduce` is the entry point (`twostage.pipeline.api`); it is
imported on first use, so that `twostage.pipeline.config` stays cheap to import.
"""

from __future__ import annotations

__all__ = ["reproduce", "reproduce_worlds", "summarize"]


def __getattr__(name: str):
    if name in __all__:
        from twostage.pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'twostage.pipeline' has no attribute {name!r}")
