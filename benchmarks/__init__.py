"""The benchmarks (`probewatch bench <name>`), one module each, all on one contract:

    add_cli_args(parser: argparse.ArgumentParser) -> None   # every flag, the common ones included
    main(args: argparse.Namespace) -> int                   # the exit status

capture, overhead, ingest, vllm, soak, review, quality, evasion, selection, threshold, augmentation,
multiple-choice, reading-by-source, sweep; `probewatch.cli.bench_cmd` maps the subcommand
names to these modules. Shared pieces live in
`harness` (common flags, the sidecar process, /metrics scraping, timing, the JSON report and the
--json last stdout line); synthetic probe bundles come from `probewatch.probes.synthetic`. Helper
modules without the contract: `soak_stream` (soak's load) and `vllm_engine` (vllm's engine worker).
Module level imports stay light: `probewatch --help` imports every benchmark.
"""
