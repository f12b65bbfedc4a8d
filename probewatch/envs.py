"""Every environment setting probewatch reads, in one place (vLLM's `envs.py` pattern).

Read through the functions below, never with `os.environ` elsewhere, so that the full list of
knobs is greppable and documented in one file.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

#: Name -> one-line description; `probewatch env` prints this table.
DESCRIPTIONS: dict[str, str] = {
    "PROBEWATCH_HOME": "cache root for provisioned models and user bundles (default: the user cache dir)",
    "PROBEWATCH_DATA": "folder holding the public datasets (training/eval defaults read from it)",
    "PROBEWATCH_DISABLE": "kill switch: '1' turns live monitoring off entirely (no hooks, no traffic)",
    "PROBEWATCH_OFFLINE": "'1' never contacts a model hub or package index",
    "PROBEWATCH_SIDECAR": "host:port of the sidecar the attach client streams to (default: localhost:50051)",
    "PROBEWATCH_INCIDENT_DB": (
        "SQLite incident store of the sidecar and `probewatch incidents` (default: $PROBEWATCH_HOME/incidents.sqlite3)"
    ),
    "PROBEWATCH_WEBHOOK_URL": "default --webhook of `probewatch serve`: alerts are POSTed there as JSON",
    "PROBEWATCH_ACTIVATIONS": "training activation cache (can grow to GBs; default: $PROBEWATCH_HOME/activations)",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def home() -> Path:
    """Cache root: models/, bundles/ live below it."""
    value = os.environ.get("PROBEWATCH_HOME")
    return Path(value).expanduser() if value else Path(platformdirs.user_cache_dir("probewatch"))


def models_dir() -> Path:
    return home() / "models"


def user_bundles_dir() -> Path:
    return home() / "bundles"


def activations_dir() -> Path:
    """Extracted residual shards, keyed by model fingerprint + data hash (training reruns skip forwards)."""
    value = os.environ.get("PROBEWATCH_ACTIVATIONS")
    return Path(value).expanduser() if value else home() / "activations"


def generated_data_dir() -> Path:
    """Data derived from public datasets by a model (e.g. the control set's own responses); never in git."""
    return home() / "datasets"


def data_dir() -> Path | None:
    value = os.environ.get("PROBEWATCH_DATA")
    return Path(value).expanduser() if value else None


def monitoring_disabled() -> bool:
    return _flag("PROBEWATCH_DISABLE")


def offline() -> bool:
    return _flag("PROBEWATCH_OFFLINE") or _flag("HF_HUB_OFFLINE")


def sidecar_address() -> str:
    return os.environ.get("PROBEWATCH_SIDECAR", "").strip() or "localhost:50051"


def sidecar_address_set() -> bool:
    """True when PROBEWATCH_SIDECAR names a sidecar (`probewatch run` then starts none of its own)."""
    return bool(os.environ.get("PROBEWATCH_SIDECAR", "").strip())


def incident_db() -> Path:
    value = os.environ.get("PROBEWATCH_INCIDENT_DB", "").strip()
    return Path(value).expanduser() if value else home() / "incidents.sqlite3"


def webhook_url() -> str | None:
    return os.environ.get("PROBEWATCH_WEBHOOK_URL", "").strip() or None
