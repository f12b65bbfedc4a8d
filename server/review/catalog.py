"""What the review app knows beyond the store: probe bundle manifests and tokenizers.

An incident names its probe, bundle version and model fingerprint; the matching manifest (from
`--bundles` and the shipped/user bundles) gives the probe's layer, method, token selection and
the set its threshold was calibrated on. The model named by the manifest gives the tokenizer
that turns stored token ids back into text for the heatmap; without one (model not on this
machine) the page shows token ids. Nothing is ever downloaded here.

Loading a tokenizer takes seconds (3.5-4.3 s measured for the first incident page when it was
loaded on demand), so the app warms every known model's tokenizer in a background thread at start
(`warm`); a page for an incident whose token texts are stored (every incident written since they
are kept) asks with `wait=False` and never blocks on it: until it is ready, the conversation shows
the raw prompt instead of the chat messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probewatch.probes.manifest import Manifest

log = logging.getLogger(__name__)


class Catalog:
    def __init__(self, bundle_paths: Sequence[Path] = (), tokenizer: str | None = None, discover: bool = True) -> None:
        self.manifests: list[Manifest] = []
        self._tokenizer_spec = tokenizer
        self._tokenizers: dict[str, Any] = {}
        self._loading: dict[str, threading.Event] = {}  # spec -> set once its tokenizer (or None) is in
        self._lock = threading.Lock()
        self._load(bundle_paths, discover)

    def _load(self, bundle_paths: Sequence[Path], discover: bool) -> None:
        from probewatch.probes.bundle import expand_bundle_dirs, read_manifest
        from probewatch.probes.errors import BundleError

        seen = set()
        for path in expand_bundle_dirs([Path(p) for p in bundle_paths]) if bundle_paths else []:
            try:
                m = read_manifest(path)
            except BundleError as exc:
                log.warning("review: skipping bundle %s: %s", path, exc)
                continue
            self.manifests.append(m)
            seen.add((m.id, str(m.version), m.model.fingerprint))
        if discover:
            from probewatch.bundle_index import discover as discover_bundles

            for b in discover_bundles():
                m = b.manifest
                if (m.id, str(m.version), m.model.fingerprint) not in seen:
                    self.manifests.append(m)

    def manifest(self, probe: str, version: str | None = None, fingerprint: str | None = None) -> Manifest | None:
        """The best match: same id, version and model; else same id and model; else same id."""
        candidates = [m for m in self.manifests if m.id == probe]
        for exact in (
            lambda m: str(m.version) == str(version) and m.model.fingerprint == fingerprint,
            lambda m: m.model.fingerprint == fingerprint,
            lambda m: True,
        ):
            matches = [m for m in candidates if exact(m)]
            if matches:
                return matches[0]
        return None

    def _spec(self, manifest: Manifest | None) -> str | None:
        return self._tokenizer_spec or (manifest.model.id if manifest is not None else None)

    def _load_tokenizer(self, spec: str, done: threading.Event) -> None:
        from probewatch.models.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(spec, fetch_if_missing=False)
        except Exception as exc:  # noqa: BLE001 - the page falls back to token ids
            log.info("review: no tokenizer for %s (%s); heatmaps show token ids", spec, exc)
            tokenizer = None
        with self._lock:
            self._tokenizers[spec] = tokenizer
        done.set()

    def _start(self, spec: str) -> threading.Event:
        """The event set when `spec`'s tokenizer is loaded, starting its loading thread if none runs."""
        with self._lock:
            done = self._loading.get(spec)
            if done is None:
                done = self._loading[spec] = threading.Event()
                threading.Thread(
                    target=self._load_tokenizer, args=(spec, done), name=f"tokenizer {spec}", daemon=True
                ).start()
            return done

    def warm(self) -> None:
        """Start loading every known model's tokenizer in the background (the app calls it at start)."""
        specs = {self._spec(m) for m in self.manifests} | ({self._tokenizer_spec} if self._tokenizer_spec else set())
        for spec in sorted(s for s in specs if s):
            self._start(spec)

    def tokenizer(self, manifest: Manifest | None, wait: bool = True) -> Any | None:
        """The tokenizer for a probe's model (the --tokenizer given, else the manifest's model), or None:
        none on this machine, or (`wait=False`) not loaded yet (its loading is started)."""
        spec = self._spec(manifest)
        if not spec:
            return None
        done = self._start(spec)
        if wait:
            done.wait()
        with self._lock:
            return self._tokenizers.get(spec)

    def loading(self, manifest: Manifest | None) -> bool:
        """Whether the probe's tokenizer is still being loaded."""
        spec = self._spec(manifest)
        with self._lock:
            done = self._loading.get(spec) if spec else None
        return done is not None and not done.is_set()
