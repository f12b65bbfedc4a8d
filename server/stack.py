"""A whole local deployment in one process: sidecar + model with the attach client + HTTP endpoint.

`probewatch run` and `probewatch demo` use it; so do the end-to-end tests. With `sidecar` set to an
address, no sidecar is started and the attach client talks to that one instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from probewatch.errors import ProbewatchError

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
    incident_db: Path | None = None
    webhook_url: str | None = None
    max_tokens: int = 128
    connect_timeout_s: float = 15.0
    extra_attach: dict = field(default_factory=dict)


class LocalStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.sidecar = None
        self.monitor = None
        self.http = None
        self.loaded = None
        self.service = None

    def start(self) -> LocalStack:
        from probewatch.models import load_model
        from probewatch.server.attach import attach
        from probewatch.server.http_app import ChatService, HTTPServerThread, create_app
        from probewatch.server.sidecar import Sidecar, sidecar_config_for

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
                )
                self.sidecar = Sidecar(config).start()
                address = self.sidecar.address
            self.loaded = load_model(o.model)
            self.monitor = attach(
                self.loaded.model, self.loaded.tokenizer, sidecar=address, mode=o.mode, **o.extra_attach
            )
            if self.monitor.enabled and not self.monitor.wait_ready(o.connect_timeout_s):
                log.warning("probewatch: sidecar %s not reachable yet; serving unmonitored until it is", address)
            self.service = ChatService(
                self.loaded.model,
                self.loaded.tokenizer,
                self.monitor,
                self.loaded.model_id,
                default_max_tokens=o.max_tokens,
            )
            self.http = HTTPServerThread(create_app(self.service), o.host, o.port).start()
        except OSError as exc:
            self.stop()
            raise ProbewatchError(f"cannot serve HTTP on {o.host}:{o.port}: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
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

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
