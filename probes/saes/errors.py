"""SAE loading errors.

Each subclasses the matching bundle error (so the CLI's one-line error mapping and any
`except BundleError` in the sidecar catch them too) and names the SAE folder and the exact
problem; each has a test in tests/probes/saes/test_errors.py.
"""

from __future__ import annotations

from probewatch.probes.errors import (
    BundleError,
    BundleNotFoundError,
    CorruptBundleError,
    DimensionMismatchError,
)


class SAEError(BundleError):
    """Base class for every problem with a sparse autoencoder on disk or at runtime."""


class SAENotFoundError(SAEError, BundleNotFoundError):
    """The SAE folder, its cfg.json or its sae_weights.safetensors is missing."""


class SAEConfigError(SAEError, CorruptBundleError):
    """cfg.json cannot be parsed, lacks a field, or holds a value this runtime cannot serve."""


class UnknownSAEArchitectureError(SAEConfigError):
    """cfg.json names an architecture with no registered implementation."""


class SAEHookError(SAEConfigError):
    """The SAE reads a hook point probewatch does not capture, or a different layer than expected."""


class SAEWeightsError(SAEError, CorruptBundleError):
    """sae_weights.safetensors is unreadable, lacks a tensor, has a wrong shape, or holds NaN/Inf."""


class SAEDimensionMismatchError(SAEError, DimensionMismatchError):
    """The SAE's d_in differs from the model's d_model (or from the rows being encoded)."""
