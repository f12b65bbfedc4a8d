"""Probe bundles and the scoring runtime: the serving path's only dependency.

Imports torch, safetensors and numpy only (no scikit-learn, matplotlib or training code).
"""

from probewatch.probes.aggregate import Aggregator, aggregate, make_aggregator
from probewatch.probes.bundle import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Bundle,
    expand_bundle_dirs,
    load_bundle,
    load_bundles,
    read_manifest,
    save_bundle,
)
from probewatch.probes.errors import (
    BundleError,
    BundleNotFoundError,
    ChecksumMismatchError,
    CorruptBundleError,
    DimensionMismatchError,
    FingerprintMismatchError,
    UnknownProbeError,
    UnsupportedFormatVersionError,
)
from probewatch.probes.manifest import Aggregation, Manifest, ModelRef, Threshold
from probewatch.probes.runtime import LayerStack, ProbeRuntime

__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "Aggregation",
    "Aggregator",
    "Bundle",
    "BundleError",
    "BundleNotFoundError",
    "ChecksumMismatchError",
    "CorruptBundleError",
    "DimensionMismatchError",
    "FingerprintMismatchError",
    "LayerStack",
    "Manifest",
    "ModelRef",
    "ProbeRuntime",
    "Threshold",
    "UnknownProbeError",
    "UnsupportedFormatVersionError",
    "aggregate",
    "expand_bundle_dirs",
    "load_bundle",
    "load_bundles",
    "make_aggregator",
    "read_manifest",
    "save_bundle",
]
