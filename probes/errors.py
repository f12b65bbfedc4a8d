"""Bundle errors. Each names the bundle path and the exact problem; each has a test."""

from __future__ import annotations


class BundleError(Exception):
    """Base class for every probe-bundle problem."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle directory, its manifest or its weights file is missing."""


class CorruptBundleError(BundleError):
    """A bundle file cannot be parsed (bad JSON, truncated safetensors, missing fields)."""


class ChecksumMismatchError(BundleError):
    """weights.safetensors does not hash to the checksum recorded in the manifest."""


class UnsupportedFormatVersionError(BundleError):
    """The manifest's format_version is newer (or older) than this runtime reads."""


class DimensionMismatchError(BundleError):
    """Weights disagree with the manifest's d_model, or with the rows being scored."""


class FingerprintMismatchError(BundleError):
    """The bundle was trained on a different model than the one it is attached to."""


class UnknownProbeError(BundleError, KeyError):
    """A probe id that no loaded bundle carries."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown probe"
