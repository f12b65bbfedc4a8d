"""The sidecar's settings (`SidecarConfig`: every limit with its default, each a `probewatch serve` flag),
the model identity it checks bundles and clients against, and its TLS credentials.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from probewatch.errors import ProbewatchError
from probewatch.server.sidecar.generations import GenerationLimits
from probewatch.server.sidecar.memory import CGROUP_ROOT, container_memory_limit, default_queue_bytes
from probewatch.server.sidecar.streams import DEFAULT_OUTBOX_SIZE
from probewatch.server.sidecar.webhook import validate_webhook_url
from probewatch.server.store.metadata_keys import validate_patterns
from probewatch.server.store.privacy import DEFAULT_MAX_CHARS, STORE_TEXT_MODES

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_LIMITS = GenerationLimits()


class SidecarConfig(BaseModel):
    """Everything `probewatch serve` configures (and what tests build directly); defaults are documented."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_id: str
    fingerprint: str
    d_model: int | None = None  # None: taken from the bundles' manifests
    bundle_paths: list[Path] = Field(default_factory=list)
    allow_unverified_bundles: bool = False  # load bundles whose manifest records no weights_sha256
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9400  # None: no /metrics server
    incident_db: str | Path | None = None  # SQLite path or database URL; None: incidents are not recorded
    webhook_url: str | None = None
    review_url: str | None = None  # base URL of the review app: webhook payloads link to the incident page
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    queue_size: int = Field(1024, ge=1)
    # bytes of tensors queued or being scored; None: a quarter of the container's memory limit, at most
    # 1 GiB, 512 MiB without a limit (server/sidecar/memory.py); beyond it chunks are shed RESOURCE_EXHAUSTED
    queue_bytes: int | None = Field(None, ge=1024)
    max_batch_rows: int = 16384
    put_timeout_s: float = 5.0
    # SAE latents exported as probewatch_sae_feature_activation, {SAE name: latent ids};
    # None: the latents the loaded sae_feature probes read (at most 32 per SAE)
    watch: dict[str, list[int]] | None = None
    # TLS for the gRPC port (PEM files); with tls_client_ca, clients must present a certificate it signed
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # -- exposure and authentication
    auth_token_file: Path | None = None  # bearer tokens, one per line; None: no token needed
    reflection: bool = False  # gRPC server reflection (lists the services to anyone who asks)
    # serve a non-loopback --host with neither a token nor mutual TLS (refused otherwise: insecure_exposure)
    allow_insecure: bool = False
    # -- admission
    max_streams: int = Field(256, ge=1)  # long-lived authenticated RPCs (Monitor, reflection) in total
    max_streams_per_peer: int = Field(128, ge=1)  # ... per client address
    # Health.Watch without a token has its own small pool: anonymous watchers never take Monitor slots
    max_watch_streams: int = Field(16, ge=1)
    max_watch_streams_per_peer: int = Field(4, ge=1)
    max_concurrent_unary: int = Field(16, ge=1)  # Score calls at once
    max_workers: int | None = None  # gRPC threads; None: both stream caps + max_concurrent_unary + 16
    # -- liveness
    keepalive_time_s: float = Field(20.0, gt=0)  # the server pings each client this often
    keepalive_timeout_s: float = Field(10.0, gt=0)  # ... and drops it when the ping is not answered in time
    min_ping_interval_s: float = Field(4.0, ge=0)  # clients may ping this often (faster: GOAWAY)
    stream_idle_timeout_s: float = Field(300.0, gt=0)  # a stream holding generations and silent this long ends
    generation_ttl_s: float = Field(3600.0, gt=0)  # a generation open longer is aborted
    generation_idle_ttl_s: float = Field(_LIMITS.idle_ttl_s, gt=0)  # ... and one that gets no chunk this long
    shutdown_grace_s: float = Field(20.0, ge=0)  # open generations get this long to close at shutdown
    # -- bounded memory
    max_generation_id_bytes: int = Field(_LIMITS.max_generation_id_bytes, ge=1)
    max_metadata_bytes: int = Field(_LIMITS.max_metadata_bytes, ge=0)
    max_metadata_entries: int = Field(_LIMITS.max_metadata_entries, ge=0)
    max_open_generations_per_stream: int = Field(_LIMITS.max_open_per_stream, ge=1)
    max_open_generations: int = Field(_LIMITS.max_open_total, ge=1)
    # per client (its bearer token with auth, else its address); None: a quarter of max_open_generations
    max_open_generations_per_client: int | None = Field(None, ge=1)
    outbox_size: int = Field(DEFAULT_OUTBOX_SIZE, ge=16)  # responses queued for a client that does not read
    max_abs_activation: float = Field(1e15, gt=0)  # |value| above this in a row or projection: INVALID_ARGUMENT
    # reads of one client's chunk payloads paced to this rate (server/sidecar/pacing.py); 0: unpaced
    max_client_mb_per_s: float = Field(0.0, ge=0)
    # -- monitoring the monitor: live score drift from calibration per probe (server/sidecar/drift.py)
    drift_window: int = Field(1000, ge=1)  # closed generations per probe in the sliding window
    # -- private data
    store_text: str = "redacted"  # full | redacted | none (server/store/privacy.py)
    max_text_chars: int = Field(DEFAULT_MAX_CHARS, ge=0)  # per stored prompt / response / metadata value
    retention_days: float = Field(30.0, ge=0)  # incidents older than this are deleted; 0: kept forever
    retention_interval_s: float = Field(3600.0, gt=0)  # how often retention runs after start-up
    pseudonym_key_file: Path | None = None  # metadata pseudonym keys, outside the store (store/pseudonym_keys.py)
    private_metadata_keys: list[str] = []  # metadata key patterns pseudonymised too (store/metadata_keys.py)

    @field_validator("store_text")
    @classmethod
    def _store_text(cls, value: str) -> str:
        if value not in STORE_TEXT_MODES:
            raise ValueError(f"store_text {value!r} not one of {', '.join(STORE_TEXT_MODES)}")
        return value

    @field_validator("private_metadata_keys")
    @classmethod
    def _private_metadata_keys(cls, value: list[str]) -> list[str]:
        return validate_patterns(value)  # ValueError naming a malformed pattern

    @field_validator("queue_bytes")
    @classmethod
    def _queue_bytes_fit_a_message(cls, value: int | None, info: ValidationInfo) -> int | None:
        largest = info.data.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        if value is not None and value < largest:
            raise ValueError(f"below the largest accepted message ({largest} bytes): such a chunk could never queue")
        return value

    def queue_budget(self, cgroup_root: Path = CGROUP_ROOT) -> int:
        """The scoring queue's byte budget: `queue_bytes`, or derived from the container's memory limit."""
        if self.queue_bytes is not None:
            return self.queue_bytes
        return default_queue_bytes(container_memory_limit(cgroup_root), self.max_message_bytes)

    def engine_limits(self) -> GenerationLimits:
        return GenerationLimits(
            max_generation_id_bytes=self.max_generation_id_bytes,
            max_metadata_bytes=self.max_metadata_bytes,
            max_metadata_entries=self.max_metadata_entries,
            max_open_per_stream=self.max_open_generations_per_stream,
            max_open_total=self.max_open_generations,
            max_open_per_client=self.max_open_generations_per_client,
            max_lifetime_s=self.generation_ttl_s,
            idle_ttl_s=self.generation_idle_ttl_s,
        )


def is_loopback(host: str) -> bool:
    """True for an address only this machine (this pod) can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def insecure_exposure(host: str, port: int, *, token: bool, mutual_tls: bool) -> str | None:
    """Why serving gRPC so would let anyone who reaches the port use the sidecar; None when it is safe.

    Safe: a loopback host, a bearer-token file, or mutual TLS (server-only TLS encrypts but admits anyone).
    `probewatch serve` refuses the rest unless --allow-insecure (issue 20, item 12).
    """
    if is_loopback(host) or token or mutual_tls:
        return None
    return (
        f"gRPC on {host} with neither a bearer token nor mutual TLS: anyone who can reach port "
        f"{port} could read the probes and write incidents. Pass --auth-token-file FILE "
        "(PROBEWATCH_AUTH_TOKEN_FILE) and/or --tls-cert/--tls-key/--tls-client-ca, bind --host 127.0.0.1, "
        "or pass --allow-insecure on a network you trust"
    )


def server_credentials(config: SidecarConfig) -> grpc.ServerCredentials | None:
    """gRPC TLS credentials from the config's PEM files (None: plaintext); CLI errors name the file."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ProbewatchError("TLS needs both --tls-cert and --tls-key")

    def read(path: Path, what: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ProbewatchError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN" not in data:
            raise ProbewatchError(f"TLS {what} {path} is not a PEM file")
        return data

    ca = read(config.tls_client_ca, "client CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(config.tls_key, "key"), read(config.tls_cert, "certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


@dataclass
class ModelIdentity:
    model_id: str
    fingerprint: str
    d_model: int | None
    folder: str | None


def resolve_model_identity(spec: str | None, fingerprint: str | None = None) -> ModelIdentity:
    """Fingerprint and d_model of a model spec without loading its weights."""
    from probewatch.models import fingerprint_folder, model_id_for, resolve_model_path

    model_id = model_id_for(spec)
    if fingerprint:
        return ModelIdentity(model_id, fingerprint, None, None)
    folder = resolve_model_path(spec)
    if not Path(folder).exists():  # a hub id: fetch only config + safetensors
        from probewatch import envs

        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                folder, allow_patterns=["config.json", "*.safetensors"], local_files_only=envs.offline()
            )
        except Exception as exc:  # any hub failure is the same CLI error
            raise ProbewatchError(
                f"cannot read model {spec!r} to fingerprint it: {exc}; pass a local folder "
                "with --model or the fingerprint with --fingerprint"
            ) from exc
    try:
        fp = fingerprint_folder(folder)
    except FileNotFoundError as exc:
        raise ProbewatchError(f"cannot fingerprint model folder {folder}: {exc}") from exc
    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config") or config
    d_model = next((int(text[k]) for k in ("hidden_size", "n_embd", "d_model") if text.get(k)), None)
    return ModelIdentity(model_id, fp, d_model, str(folder))


def sidecar_config_for(
    model: str | None, bundles: list[str] | None = None, fingerprint: str | None = None, **settings
) -> SidecarConfig:
    """Resolve a model spec and bundle specs (default: the shipped bundles for the model)."""
    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs, shipped_root

    identity = resolve_model_identity(model, fingerprint)
    paths = resolve_bundle_specs(bundles, identity.model_id) if bundles else default_bundle_dirs(identity.model_id)
    if not paths:
        raise ProbewatchError(
            f"no probe bundles for model {identity.model_id!r}: none shipped under {shipped_root()} and none given. "
            "Train them (the training pipeline exports bundles under probes/shipped/<model>/) or pass --bundles DIR"
        )
    for key in ("webhook_url", "review_url"):
        if settings.get(key):
            validate_webhook_url(settings[key])
    return make_config(
        model_id=identity.model_id,
        fingerprint=identity.fingerprint,
        d_model=identity.d_model,
        bundle_paths=list(paths),
        **settings,
    )


def make_config(**settings) -> SidecarConfig:
    """SidecarConfig, with an invalid setting as a one-line ProbewatchError naming it."""
    try:
        return SidecarConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ProbewatchError(f"invalid setting {field}={first.get('input')!r}: {first['msg']}") from None
