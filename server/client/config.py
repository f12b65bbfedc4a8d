"""Settings of the monitoring client (both backends): `AttachConfig`."""

from __future__ import annotations

from typing import Literal, cast

from pydantic import BaseModel, Field

from probewatch import envs
from probewatch.server.client.unmonitored import OnUnmonitored

AttachMode = Literal["rows", "pushdown"]


class AttachConfig(BaseModel):
    """Client settings (all optional)."""

    sidecar: str = Field(default_factory=envs.sidecar_address)
    mode: AttachMode = "rows"
    wire_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: the model's dtype
    queue_size: int = 1024  # captured blocks waiting for the sender; beyond: drop and count
    steps_per_message: int = 8  # decode steps merged into one chunk (at most)
    linger_s: float = 0.02  # how long the sender waits to merge steps
    send_queue_size: int = 256  # serialised messages waiting for gRPC
    # a stream that takes no message for this long is stalled: the sender drops (counted `stalled`)
    # instead of waiting, so a hung sidecar never holds the sender (keepalive then ends the stream)
    send_stall_s: float = 1.0
    connect_timeout_s: float = 2.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 15.0
    # HTTP/2 keepalive: a PING every `keepalive_time_s` (also with no call in flight); no answer within
    # `keepalive_timeout_s` closes the transport, so a hung (not closed) sidecar is detected, reported
    # (monitoring_up 0) and reconnected to
    keepalive_time_s: float = 5.0
    keepalive_timeout_s: float = 5.0
    result_timeout_s: float = 10.0
    score_final_token: bool = True
    # TLS to the sidecar (PEM paths): CA to verify it, and a client certificate when it requires one
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None  # expected name in the sidecar's certificate (default: the host)
    # bearer token file of a sidecar started with --auth-token-file: its first token is sent on every
    # call, re-read at each (re)connect so a rotated file is picked up (PROBEWATCH_AUTH_TOKEN_FILE)
    auth_token_file: str | None = Field(default_factory=lambda: _env_token_file())
    # the sidecar's Open limits (its defaults): caller-controlled ids and metadata are bounded to them
    # before sending, so they can never make the sidecar refuse a generation (server/client/bounds.py)
    max_generation_id_bytes: int = 256
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 16384
    # a generation that cannot be monitored (sidecar down or lost, Open refused, unsupported input):
    # 'allow' serves it unmonitored (fail-open, counted), 'reject' refuses it to the caller
    # (server/client/unmonitored.py says why 'allow' is the default; PROBEWATCH_ON_UNMONITORED)
    on_unmonitored: OnUnmonitored = Field(default_factory=lambda: cast(OnUnmonitored, envs.on_unmonitored()))


def _env_token_file() -> str | None:
    path = envs.auth_token_file()
    return str(path) if path else None
