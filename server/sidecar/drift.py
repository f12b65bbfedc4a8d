"""Monitor the monitor: per probe, how far live scores have drifted from the calibration distribution.

A probe's threshold is only as good as the assumption that live traffic scores like the set it was
calibrated on. Per probe, a sliding window of the last `window` generations' aggregate scores is kept
as counts in the bundle's calibration bins (probes/calibration.py) plus how many of them alerted; at
each scrape the sidecar exports

- `probewatch_probe_score_psi{probe}`: the population stability index of the window against the
  calibration bins (about (bins - 1) / window from sampling noise alone; above 0.25 is the usual
  "the population has shifted" mark: the threshold's false-positive rate no longer holds);
- `probewatch_probe_alert_rate{probe}`: the window's share of generations that alerted;
- `probewatch_probe_expected_alert_rate{probe}`: the calibration set's share at or above the shipped
  threshold (what the rate should be on traffic like it);
- `probewatch_probe_alert_rate_ratio{probe}`: the two divided (1: as calibrated);
- `probewatch_probe_drift_window_generations{probe}`: generations in the window.

PSI and the rates appear once the window holds `min_generations` (the first few generations say
nothing); a bundle without a calibration reference (exported before it existed) reports only the
live alert rate. Cost: one bisect over <= 20 edges and a few array writes per probe at each close,
on the scoring thread; PSI is computed at scrape time. No gRPC here (data plane).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from probewatch.server.sidecar.specs import ProbeSpec

__all__ = ["DEFAULT_DRIFT_WINDOW", "DriftMonitor", "ProbeWindow"]

DEFAULT_DRIFT_WINDOW = 1000  # generations per probe (--drift-window)
MIN_GENERATIONS = 100  # exported once a window holds this many (or the whole window, when smaller)


class ProbeWindow:
    """The last `size` generations of one probe: their calibration bin and whether they alerted (ring)."""

    def __init__(self, spec: ProbeSpec, size: int) -> None:
        self.spec = spec
        self.size = size
        ref = spec.reference
        self.counts = np.zeros(len(ref.fractions) if ref is not None else 1, dtype=np.int64)
        self._bins = np.zeros(size, dtype=np.int16)
        self._alerted = np.zeros(size, dtype=bool)
        self.n = 0
        self.alerts = 0
        self._next = 0

    def observe(self, value: float) -> None:
        ref = self.spec.reference
        b = ref.bin(value) if ref is not None else 0
        alerted = value >= self.spec.threshold
        i = self._next
        if self.n == self.size:  # the oldest leaves the window
            self.counts[self._bins[i]] -= 1
            self.alerts -= int(self._alerted[i])
        else:
            self.n += 1
        self._bins[i], self._alerted[i] = b, alerted
        self.counts[b] += 1
        self.alerts += int(alerted)
        self._next = (i + 1) % self.size

    def psi(self) -> float | None:
        ref = self.spec.reference
        return ref.psi(self.counts) if ref is not None and self.n else None

    @property
    def alert_rate(self) -> float:
        return self.alerts / self.n if self.n else 0.0


class DriftMonitor(Collector):
    """Per-probe windows fed at each generation close (`observe`), exported as gauges at scrape (`collect`)."""

    def __init__(self, specs: Mapping[str, ProbeSpec], window: int = DEFAULT_DRIFT_WINDOW) -> None:
        self.specs = specs
        self._lock = threading.Lock()
        self.configure(window)

    def configure(self, window: int) -> DriftMonitor:
        """(Re)start every window with `window` generations (--drift-window)."""
        if window < 1:
            raise ValueError(f"drift window must be at least 1 generation, got {window}")
        with self._lock:
            self.window = window
            self.windows = {pid: ProbeWindow(spec, window) for pid, spec in self.specs.items()}
        return self

    @property
    def min_generations(self) -> int:
        return min(MIN_GENERATIONS, self.window)

    def observe(self, values: Mapping[str, tuple[float, int]]) -> None:
        """One closed generation: per probe (aggregate, tokens aggregated); a probe that scored no token
        (count 0) has no aggregate and is skipped."""
        with self._lock:
            for pid, (value, count) in values.items():
                w = self.windows.get(pid)
                if w is not None and count > 0 and np.isfinite(value):
                    w.observe(float(value))

    def snapshot(self) -> dict[str, dict[str, float | None]]:
        """Per probe: generations, psi, alert_rate, expected_alert_rate, alert_rate_ratio (None: not known yet)."""
        out: dict[str, dict[str, float | None]] = {}
        with self._lock:
            for pid, w in self.windows.items():
                ready = w.n >= self.min_generations
                ref = w.spec.reference
                expected = ref.expected_alert_rate if ref is not None else None
                out[pid] = {
                    "generations": float(w.n),
                    "psi": w.psi() if ready else None,
                    "alert_rate": w.alert_rate if ready else None,
                    "expected_alert_rate": expected,
                    "alert_rate_ratio": w.alert_rate / expected if ready and expected else None,
                }
        return out

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "generations": GaugeMetricFamily(
                "probewatch_probe_drift_window_generations",
                "Generations in the probe's drift window (the last --drift-window closed generations).",
                labels=["probe"],
            ),
            "psi": GaugeMetricFamily(
                "probewatch_probe_score_psi",
                "Population stability index of the drift window's aggregate scores against the bundle's "
                "calibration score bins (0: unchanged; > 0.25: shifted).",
                labels=["probe"],
            ),
            "alert_rate": GaugeMetricFamily(
                "probewatch_probe_alert_rate",
                "Share of the drift window's generations that alerted.",
                labels=["probe"],
            ),
            "expected_alert_rate": GaugeMetricFamily(
                "probewatch_probe_expected_alert_rate",
                "Share of the calibration set at or above the shipped threshold (the alert rate to expect).",
                labels=["probe"],
            ),
            "alert_rate_ratio": GaugeMetricFamily(
                "probewatch_probe_alert_rate_ratio",
                "Drift window alert rate / expected alert rate (1: as calibrated).",
                labels=["probe"],
            ),
        }
        for pid, values in self.snapshot().items():
            for key, value in values.items():
                if value is not None:
                    families[key].add_metric([pid], value)
        yield from families.values()
