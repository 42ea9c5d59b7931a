"""Errors that twostage raises on purpose, each with a message meant for a person."""

from __future__ import annotations


class TwoStageError(Exception):
    """Base class of every error twostage raises on purpose."""


class DataFormatError(TwoStageError, ValueError):
    """A data file is missing or does not match its layout.

    The message names the file, the line (1-based) or field, and what was expected.
    """

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(TwoStageError, ValueError):
    """A setting, or a combination of settings, cannot be used.

    The message names the setting as the library knows it (`world.cut`); `setting` holds that
    name, so that the command line can add the flag that sets it (`--cut`).
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class NumericsError(TwoStageError, FloatingPointError):
    """A propensity, logit or loss is not a finite number where one is needed."""


class DownloadError(TwoStageError, OSError):
    """A dataset could not be fetched, or its checksum did not match."""
