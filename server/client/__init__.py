"""Backend-agnostic parts of the monitoring client, shared by every capture backend.

- `config`: `AttachConfig`, the client settings (mode, queues, backoff, keepalive, TLS);
- `results`: `GenerationHandle` / `GenerationResult`, what a caller gets back per generation;
- `plan`: `Plan` / `LayerCapture`, what to capture, from the sidecar's `ListProbes`;
- `link`: `SidecarLink`, the connection (ListProbes + one multiplexed stream, keepalive,
  reconnect with backoff, fail-open);
- `sender`: the bounded capture queue and the sender thread that turns captured row blocks into
  `ActivationChunk`s;
- `core`: `ClientCore`, the above wired together; a backend (HF `generate()` in
  `probewatch.server.client.hf_attach`, the vLLM worker plugin in `probewatch.server.client.vllm_plugin`) only captures
  rows on the model's device and says which (generation, position, token) each row is.
"""
