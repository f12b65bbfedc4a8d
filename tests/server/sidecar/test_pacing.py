"""Per-client byte-rate pacing (`--max-client-mb-per-s`): a client over its rate is read later, so
its sends slow down and nothing is dropped, while another client is read at once."""

from __future__ import annotations

import time

import numpy as np

from probewatch.server.sidecar.pacing import ClientPacer
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape

TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"


def test_token_bucket_per_client():
    pacer = ClientPacer(1_000_000, burst_s=1.0)
    assert pacer.charge("a", 900_000) == 0.0  # within the burst
    wait = pacer.charge("a", 600_000)  # 0.5 MB of debt at 1 MB/s
    assert 0.45 <= wait <= 0.51
    assert pacer.charge("b", 900_000) == 0.0  # another client has its own bucket
    assert ClientPacer(0).charge("a", 10**12) == 0.0 and not ClientPacer(0).enabled
    assert ClientPacer(1.0, max_wait_s=2.0).charge("x", 10**9) == 2.0  # bounded wait per message


def test_a_fast_client_is_paced_and_another_is_not(start_sidecar, tmp_path, tiny_fp):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    # 2 MB/s with a 1 s burst; each chunk below is 1 MiB (4096 rows x 64 floats)
    sidecar = start_sidecar(auth_token_file=token_file, max_client_mb_per_s=2.0)
    heavy, light = StreamClient(sidecar.address, TOKEN_A), StreamClient(sidecar.address, TOKEN_B)
    block = np.zeros((4096, D_TINY), np.float32)
    t0 = time.monotonic()
    heavy.send(
        open_msg("h", tiny_fp), *[chunk_msg("h", 1, block, list(range(i * 4096, (i + 1) * 4096))) for i in range(4)]
    )
    light.send(open_msg("l", tiny_fp), chunk_msg("l", 1, block[:2], [0, 1]), close_msg("l"))
    assert light.wait_summary("l").status == "closed"
    light_s = time.monotonic() - t0
    heavy.send(close_msg("h"))
    summary = heavy.wait_summary("h", timeout=30)
    heavy_s = time.monotonic() - t0
    assert summary.status == "closed" and not heavy.of("error")  # paced, nothing dropped
    # 4.2 MB at 2 MB/s after a 2 MB burst: at least ~1 s of waiting before the last chunk is read
    assert heavy_s >= 0.9 and light_s < heavy_s, (light_s, heavy_s)
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_paced_seconds_total") >= 0.8
    assert metric_value(text, "probewatch_dropped_chunks_total", reason="queue_bytes") == 0
    heavy.close()
    light.close()
