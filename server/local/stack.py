"""A whole local deployment in one process: sidecar + model with the attach client + HTTP endpoint.

`probewatch run` and `probewatch demo` use it; so do the end-to-end tests. With `sidecar` set to an
address, no sidecar is started and the attach client talks to that one instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from probewatch.errors import ProbewatchError

if TYPE_CHECKING:
    from probewatch.models.loading import LoadedModel
    from probewatch.server.client.hf_attach import AttachedModel
    from probewatch.server.inference.chat import ChatService
    from probewatch.server.inference.limits import HTTPLimits
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.auth import AuthConfig
    from probewatch.server.sidecar.process import Sidecar
    from probewatch.server.store import IncidentStore

log = logging.getLogger(__name__)


@dataclass
class StackOptions:
    model: str | None = None
    bundles: list[str] | None = None
    sidecar: str | None = None  # external sidecar address; None: start one in-process
    mode: str = "rows"  # attach mode: rows | pushdown
    host: str = "127.0.0.1"
    port: int = 8000  # HTTP port (0: ephemeral)
    sidecar_port: int = 0  # in-process sidecar gRPC port (0: ephemeral)
    metrics_port: int | None = 0  # in-process sidecar /metrics port (0: ephemeral, None: off)
    incident_db: str | Path | None = None  # SQLite path or database URL
    webhook_url: str | None = None
    max_tokens: int = 128
    connect_timeout_s: float = 15.0
    extra_attach: dict = field(default_factory=dict)
    http_limits: HTTPLimits | None = None  # API keys and request limits of the HTTP endpoint
    sidecar_settings: dict = field(default_factory=dict)  # extra SidecarConfig fields of the in-process sidecar
    review: AuthConfig | None = None  # mount the review app at /review on the HTTP server (needs incident_db)
    review_url: str | None = None  # base URL of a review app: webhook payloads link to incident pages


class LocalStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.sidecar: Sidecar | None = None  # None when options.sidecar names an external one
        self.monitor: AttachedModel | None = None
        self.http: HTTPServerThread | None = None
        self.loaded: LoadedModel | None = None
        self.service: ChatService | None = None
        self.review_store: IncidentStore | None = None

    def start(self) -> LocalStack:
        from probewatch.models import load_model
        from probewatch.server.client.hf_attach import attach
        from probewatch.server.inference.app import create_app
        from probewatch.server.inference.chat import ChatService
        from probewatch.server.inference.server_thread import HTTPServerThread
        from probewatch.server.sidecar.config import sidecar_config_for
        from probewatch.server.sidecar.process import Sidecar

        o = self.options
        try:
            address = o.sidecar
            if address is None:
                # resolve bundles before loading the model: a missing-bundles error should come first and fast
                config = sidecar_config_for(
                    o.model,
                    o.bundles,
                    host="127.0.0.1",
                    port=o.sidecar_port,
                    metrics_host="127.0.0.1" if o.host == "127.0.0.1" else "0.0.0.0",
                    metrics_port=o.metrics_port,
                    incident_db=o.incident_db,
                    webhook_url=o.webhook_url,
                    **o.sidecar_settings,
                    review_url=o.review_url,
                )
                self.sidecar = sidecar = Sidecar(config).start()
                address = sidecar.address
            self.loaded = loaded = load_model(o.model)
            self.monitor = monitor = attach(
                loaded.model, loaded.tokenizer, sidecar=address, mode=o.mode, **o.extra_attach
            )
            if monitor.enabled and not monitor.wait_ready(o.connect_timeout_s):
                log.warning(
                    "probewatch: sidecar %s did not answer within %gs; serving unmonitored until it does",
                    address,
                    o.connect_timeout_s,
                )
            self.service = service = ChatService(
                loaded.model,
                loaded.tokenizer,
                monitor,
                loaded.model_id,
                default_max_tokens=o.max_tokens,
                limits=o.http_limits,
            )
            app = create_app(service)
            if o.review is not None:
                app.mount("/review", self._review_app(o.review))
            # with the review app mounted, the TCP peer decides whether an identity header is trusted
            self.http = HTTPServerThread(app, o.host, o.port, proxy_headers=o.review is None).start()
        except OSError as exc:
            self.stop()
            raise ProbewatchError(f"cannot serve HTTP on {o.host}:{o.port}: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def _review_app(self, auth: AuthConfig):
        from probewatch.server.review.app import create_review_app
        from probewatch.server.review.catalog import Catalog
        from probewatch.server.store import IncidentStore

        if self.options.incident_db is None:
            raise ProbewatchError("the review app needs the incident store (--incident-db or $PROBEWATCH_INCIDENT_DB)")
        self.review_store = IncidentStore.open(self.options.incident_db)
        catalog = Catalog(self.sidecar.config.bundle_paths if self.sidecar is not None else ())
        return create_review_app(self.review_store, auth, catalog)

    @property
    def url(self) -> str:
        if self.http is None:
            raise RuntimeError("the stack is not serving HTTP (not started, or stopped)")
        return self.http.url

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.monitor is not None:
            self.monitor.detach()
            self.monitor = None
        if self.sidecar is not None:
            self.sidecar.stop()
            self.sidecar = None
        if self.review_store is not None:
            self.review_store.close()
            self.review_store = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
