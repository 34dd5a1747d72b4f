"""Domain errors that the CLI turns into one actionable line."""

from __future__ import annotations


class SemiofedError(Exception):
    """An error a user can act on: what is wrong, and how to fix it.

    The message must name the thing (file, model, column) and say the fix;
    the CLI prints it as one line with no traceback.
    """

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}. Fix: {fix}" if fix else what)


class ModelFileError(SemiofedError):
    """A model file is missing, has the wrong hash, or cannot be loaded."""


class VideoError(SemiofedError):
    """A video cannot be opened or decoded."""


class ManifestError(SemiofedError):
    """The manifest is missing, malformed, or names a bad row."""


class SiteError(SemiofedError):
    """The site directory is missing, incomplete, or inconsistent."""


class RecordError(SemiofedError):
    """A de-identified record is missing, corrupt, or of another schema."""
