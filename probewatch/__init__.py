"""probewatch: deception, refusal and alignment-faking probes that watch an LLM's residual stream.

The core package holds what every part shares: settings (`envs`), model provisioning and
fingerprinting (`models`), residual capture (`capture`), the dialogue data contract (`data`) and
the CLI. Probe bundles and scoring live in `probewatch.probes`; offline training in
`probewatch.training`; the live sidecar in `probewatch.server`.
"""

__version__ = "0.1.0"
