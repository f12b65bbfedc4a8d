"""Bundle format: round trip and every error path, each with its exception type and message."""

from __future__ import annotations

import json

import pytest
import torch

from probewatch.probes import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    BundleNotFoundError,
    ChecksumMismatchError,
    CorruptBundleError,
    DimensionMismatchError,
    FingerprintMismatchError,
    UnsupportedFormatVersionError,
    load_bundle,
    load_bundles,
    read_manifest,
    save_bundle,
)
from tests.probes.helpers import FINGERPRINT, make_bundle, make_manifest


def test_round_trip_keeps_manifest_and_tensors(tmp_path):
    path, tensors = make_bundle(tmp_path, standardize=True)
    bundle = load_bundle(path, expected_fingerprint=FINGERPRINT, expected_d_model=8)
    assert bundle.manifest.id == "p" and bundle.manifest.layer == 1
    assert bundle.manifest.hook_name == "blocks.1.hook_resid_post"
    for name, value in tensors.items():
        assert torch.equal(bundle.tensors[name], value)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1 and len(manifest["weights_sha256"]) == 64
    assert manifest["created_at"] and manifest["probewatch_version"]


def test_missing_directory_manifest_and_weights(tmp_path):
    with pytest.raises(BundleNotFoundError, match="bundle directory not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleNotFoundError, match="manifest.json: missing"):
        load_bundle(tmp_path / "empty")
    path, _ = make_bundle(tmp_path)
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleNotFoundError, match="weights.safetensors: missing"):
        load_bundle(path)


def test_corrupt_manifest_json(tmp_path):
    path, _ = make_bundle(tmp_path)
    (path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CorruptBundleError, match="not valid JSON"):
        load_bundle(path)


def test_manifest_missing_field_and_bad_values(tmp_path):
    path, _ = make_bundle(tmp_path)
    data = json.loads((path / MANIFEST_FILE).read_text())
    del data["threshold"]
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(CorruptBundleError, match="missing field 'threshold'"):
        read_manifest(path)
    data = json.loads(json.dumps(make_manifest(behaviour="lying").to_dict()))
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(CorruptBundleError, match="behaviour 'lying'"):
        read_manifest(path)


def test_checksum_mismatch(tmp_path):
    path, _ = make_bundle(tmp_path)
    raw = bytearray((path / WEIGHTS_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatchError, match="does not match the manifest"):
        load_bundle(path)


def test_corrupt_weights_with_matching_checksum(tmp_path):
    """A truncated file whose checksum was (wrongly) re-recorded still fails to parse, clearly."""
    path, _ = make_bundle(tmp_path)
    (path / WEIGHTS_FILE).write_bytes(b"\x00\x01garbage")
    data = json.loads((path / MANIFEST_FILE).read_text())
    data["weights_sha256"] = __import__("hashlib").sha256(b"\x00\x01garbage").hexdigest()
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(CorruptBundleError, match="not a readable safetensors file"):
        load_bundle(path)


def test_unsupported_format_version(tmp_path):
    path, _ = make_bundle(tmp_path)
    data = json.loads((path / MANIFEST_FILE).read_text())
    data["format_version"] = 99
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(UnsupportedFormatVersionError, match="format_version 99 is not supported"):
        load_bundle(path)


def test_dimension_mismatch_in_weights_and_against_model(tmp_path):
    manifest = make_manifest(d=8)
    with pytest.raises(DimensionMismatchError, match="has 5 values but the manifest says d_model=8"):
        save_bundle(tmp_path / "bad", manifest, {"weight": torch.randn(5), "bias": torch.zeros(1)})
    path, _ = make_bundle(tmp_path)
    with pytest.raises(DimensionMismatchError, match="d_model=8 but the model has d_model=576"):
        load_bundle(path, expected_d_model=576)


def test_fingerprint_mismatch(tmp_path):
    path, _ = make_bundle(tmp_path)
    with pytest.raises(FingerprintMismatchError, match="was trained on model 'tiny'.*retrain or export"):
        load_bundle(path, expected_fingerprint="pwfp1:" + "00" * 16)


def test_nan_weights_are_refused(tmp_path):
    with pytest.raises(CorruptBundleError, match="NaN or Inf"):
        save_bundle(
            tmp_path / "nan", make_manifest(), {"weight": torch.full((8,), float("nan")), "bias": torch.zeros(1)}
        )


def test_folder_of_bundles_expands(tmp_path):
    make_bundle(tmp_path, "a")
    make_bundle(tmp_path, "b", layer=2)
    bundles = load_bundles([tmp_path])
    assert [b.id for b in bundles] == ["a", "b"]
    (tmp_path / "x").mkdir()
    with pytest.raises(BundleNotFoundError, match="neither a bundle nor a folder of bundles"):
        load_bundles([tmp_path / "x"])


# -- integrity: a checksum is required, weights_file stays inside the bundle ------------------------------
def _edit_manifest(path, **fields):
    data = json.loads((path / MANIFEST_FILE).read_text())
    data.update(fields)
    (path / MANIFEST_FILE).write_text(json.dumps(data))


def test_bundle_without_checksum_is_refused_unless_allowed(tmp_path):
    from probewatch.probes.bundle import UnverifiedBundleError

    path, tensors = make_bundle(tmp_path)
    _edit_manifest(path, weights_sha256="")
    with pytest.raises(UnverifiedBundleError, match="records no weights_sha256.*--allow-unverified-bundles"):
        load_bundle(path)
    with pytest.raises(UnverifiedBundleError):
        load_bundles([tmp_path])
    bundle = load_bundle(path, allow_unverified=True)  # the explicit opt-in loads it
    assert torch.equal(bundle.tensors["weight"], tensors["weight"])
    assert [b.id for b in load_bundles([tmp_path], allow_unverified=True)] == ["p"]


@pytest.mark.parametrize("weights_file", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE", ""])
def test_weights_file_outside_the_bundle_is_refused(tmp_path, weights_file):
    from probewatch.probes.bundle import BundlePathError

    path, _ = make_bundle(tmp_path / "b")
    outside = tmp_path / "b" / "outside.safetensors"
    outside.write_bytes((path / WEIGHTS_FILE).read_bytes())  # a valid file, with the recorded checksum
    if weights_file == "ABSOLUTE":
        weights_file = str(outside)
    _edit_manifest(path, weights_file=weights_file)
    with pytest.raises(BundlePathError, match="weights_file"):
        load_bundle(path, allow_unverified=True)


def test_weights_symlink_leaving_the_bundle_is_refused_but_one_inside_is_fine(tmp_path):
    """ConfigMap mounts are symlinks into a `..data` folder of the same mount: those must keep working."""
    from probewatch.probes.bundle import BundlePathError

    path, _ = make_bundle(tmp_path / "b")
    data_dir = path / "..data"
    data_dir.mkdir()
    (path / WEIGHTS_FILE).rename(data_dir / WEIGHTS_FILE)
    (path / WEIGHTS_FILE).symlink_to(data_dir / WEIGHTS_FILE)
    assert load_bundle(path).id == "p"
    secret = tmp_path / "elsewhere.safetensors"
    (data_dir / WEIGHTS_FILE).rename(secret)
    (path / WEIGHTS_FILE).unlink()
    (path / WEIGHTS_FILE).symlink_to(secret)
    with pytest.raises(BundlePathError, match="outside the bundle folder"):
        load_bundle(path)
