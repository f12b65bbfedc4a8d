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
        "incident store of the sidecar, `probewatch incidents` and `probewatch review`: a SQLite file path or a "
        "database URL (postgresql://user@host/db for a fleet; default: $PROBEWATCH_HOME/incidents.sqlite3)"
    ),
    "PROBEWATCH_REVIEW_URL": (
        "base URL of the review app (`probewatch review`): webhook payloads carry the incident page's URL"
    ),
    "PROBEWATCH_REVIEW_TOKEN_FILE": (
        "file of reviewer bearer tokens (`name:token` per line) for `probewatch review` (e.g. a mounted Secret)"
    ),
    "PROBEWATCH_REVIEW_ALLOWED_HOSTS": (
        "comma list of extra Host names the review app answers (--allowed-host; other Hosts get 400: "
        "DNS rebinding defence)"
    ),
    "PROBEWATCH_GRAFANA_URL": (
        "base URL of Grafana (e.g. https://grafana.example.com): the review app links incidents and the queue "
        "to the probewatch dashboard (--grafana-url)"
    ),
    "PROBEWATCH_PROMETHEUS_URL": (
        "base URL of the Prometheus that scrapes the sidecars: the review app's probe cards show each probe's live "
        "score drift from calibration (--prometheus-url)"
    ),
    "PROBEWATCH_WEBHOOK_URL": "default --webhook of `probewatch serve`: alerts are POSTed there as JSON",
    "PROBEWATCH_AUTH_TOKEN_FILE": (
        "file of bearer tokens: `probewatch serve` requires one of them on every RPC but health "
        "(--auth-token-file); clients send its first line"
    ),
    "PROBEWATCH_API_KEY": "API key `probewatch run` requires as `Authorization: Bearer <key>` (--api-key)",
    "PROBEWATCH_PSEUDONYM_KEY_FILE": (
        "key file of metadata pseudonyms (--pseudonym-key-file; first line current, older keys below; "
        "default: <store>.pseudonym-keys next to a SQLite store)"
    ),
    "PROBEWATCH_PRIVATE_METADATA_KEYS": (
        "comma-separated metadata key patterns pseudonymised beyond the built-in ones (--private-metadata-key)"
    ),
    "PROBEWATCH_ACTIVATIONS": "training activation cache (can grow to GBs; default: $PROBEWATCH_HOME/activations)",
    "PROBEWATCH_MODE": "vLLM plugin: 'rows' (default) ships residual rows, 'pushdown' ships h @ W projections",
    "PROBEWATCH_LAYERS": (
        "vLLM plugin: layers to capture when the sidecar cannot be asked at engine start (comma list; "
        "default: the layers the sidecar's ListProbes names)"
    ),
    "PROBEWATCH_WAIT_S": "vLLM plugin: seconds the engine start waits for the sidecar's capture plan (default 30)",
    "PROBEWATCH_SEND_LINGER_MS": (
        "vLLM plugin: how long the sender gathers steps into one chunk per generation and layer (default 1000; "
        "fewer, larger messages under continuous batching, scores that much later)"
    ),
    "PROBEWATCH_MONITOR": (
        "vLLM plugin default policy: 'all' (default) monitors every request, 'none' only those that "
        "opt in with SamplingParams.extra_args {'probewatch': true}"
    ),
    "PROBEWATCH_CALLER_OPT_OUT": (
        "vLLM plugin: honour a caller's extra_args {'probewatch': false} (default off: callers reach "
        "extra_args over HTTP through vllm_xargs, so an opt-out is ignored and counted)"
    ),
    "PROBEWATCH_FINGERPRINT": "vLLM plugin: the model fingerprint when the served model is not a local HF folder",
    "PROBEWATCH_CLIENT_METRICS_PORT": "vLLM plugin: port of the worker's client /metrics (unset: not served)",
    "PROBEWATCH_ON_UNMONITORED": (
        "attach client: 'allow' (default, fail-open) serves a generation that cannot be monitored, 'reject' "
        "refuses it (HF attach raises, `probewatch run` answers 503; the vLLM plugin only counts, docs/live.md)"
    ),
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


def incident_db() -> str:
    """The incident store's location: a SQLite path or a database URL (kept as text: a Path would
    collapse the `//` of a URL)."""
    value = os.environ.get("PROBEWATCH_INCIDENT_DB", "").strip()
    return value if value else str(home() / "incidents.sqlite3")


def review_url() -> str | None:
    return os.environ.get("PROBEWATCH_REVIEW_URL", "").strip() or None


def review_token_file() -> Path | None:
    value = os.environ.get("PROBEWATCH_REVIEW_TOKEN_FILE", "").strip()
    return Path(value).expanduser() if value else None


def review_allowed_hosts() -> list[str]:
    return [h.strip() for h in os.environ.get("PROBEWATCH_REVIEW_ALLOWED_HOSTS", "").split(",") if h.strip()]


def grafana_url() -> str | None:
    return os.environ.get("PROBEWATCH_GRAFANA_URL", "").strip() or None


def prometheus_url() -> str | None:
    return os.environ.get("PROBEWATCH_PROMETHEUS_URL", "").strip() or None


def webhook_url() -> str | None:
    return os.environ.get("PROBEWATCH_WEBHOOK_URL", "").strip() or None


def vllm_mode() -> str:
    value = os.environ.get("PROBEWATCH_MODE", "").strip().lower() or "rows"
    if value not in ("rows", "pushdown"):
        raise ValueError(f"PROBEWATCH_MODE must be 'rows' or 'pushdown', got {value!r}")
    return value


def vllm_layers() -> list[int] | None:
    """PROBEWATCH_LAYERS as a list of ints, or None when unset."""
    value = os.environ.get("PROBEWATCH_LAYERS", "").strip()
    if not value:
        return None
    try:
        return sorted({int(x) for x in value.replace(" ", "").split(",") if x})
    except ValueError:
        raise ValueError(f"PROBEWATCH_LAYERS must be a comma list of layer indices, got {value!r}") from None


def vllm_wait_s() -> float:
    value = os.environ.get("PROBEWATCH_WAIT_S", "").strip()
    return float(value) if value else 30.0


def vllm_send_linger_s() -> float:
    value = os.environ.get("PROBEWATCH_SEND_LINGER_MS", "").strip()
    try:
        ms = float(value) if value else 1000.0
    except ValueError:
        raise ValueError(f"PROBEWATCH_SEND_LINGER_MS must be a number of milliseconds, got {value!r}") from None
    if not 0 <= ms <= 10_000:
        raise ValueError(f"PROBEWATCH_SEND_LINGER_MS must be within 0..10000, got {value!r}")
    return ms / 1000.0


def vllm_monitor_default() -> bool:
    """True: monitor every request unless it opts out (PROBEWATCH_MONITOR=all, the default)."""
    value = os.environ.get("PROBEWATCH_MONITOR", "").strip().lower() or "all"
    if value not in ("all", "none"):
        raise ValueError(f"PROBEWATCH_MONITOR must be 'all' or 'none', got {value!r}")
    return value == "all"


def vllm_caller_opt_out() -> bool:
    """True: a request's extra_args may switch its monitoring off (PROBEWATCH_CALLER_OPT_OUT=1)."""
    return _flag("PROBEWATCH_CALLER_OPT_OUT")


def fingerprint_override() -> str | None:
    return os.environ.get("PROBEWATCH_FINGERPRINT", "").strip() or None


def client_metrics_port() -> int | None:
    value = os.environ.get("PROBEWATCH_CLIENT_METRICS_PORT", "").strip()
    return int(value) if value else None


def auth_token_file() -> Path | None:
    value = os.environ.get("PROBEWATCH_AUTH_TOKEN_FILE", "").strip()
    return Path(value).expanduser() if value else None


def api_key() -> str | None:
    return os.environ.get("PROBEWATCH_API_KEY", "").strip() or None


def pseudonym_key_file() -> Path | None:
    """PROBEWATCH_PSEUDONYM_KEY_FILE: the metadata pseudonym key file (server/store/pseudonym_keys.py)."""
    value = os.environ.get("PROBEWATCH_PSEUDONYM_KEY_FILE", "").strip()
    return Path(value).expanduser() if value else None


def private_metadata_keys() -> list[str]:
    """PROBEWATCH_PRIVATE_METADATA_KEYS: comma-separated metadata key patterns to pseudonymise too."""
    return [p.strip() for p in os.environ.get("PROBEWATCH_PRIVATE_METADATA_KEYS", "").split(",") if p.strip()]


def on_unmonitored() -> str:
    """PROBEWATCH_ON_UNMONITORED: 'allow' (default) or 'reject'."""
    value = os.environ.get("PROBEWATCH_ON_UNMONITORED", "").strip().lower() or "allow"
    if value not in ("allow", "reject"):
        raise ValueError(f"PROBEWATCH_ON_UNMONITORED must be 'allow' or 'reject', got {value!r}")
    return value
