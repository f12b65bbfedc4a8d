"""Argument helpers shared by commands: the definitions live in core (`probewatch.arguments`), which
the benchmarks use too; the CLI modules keep importing them from here."""

from __future__ import annotations

from probewatch.arguments import add_bundles_arg, add_extra_data_arg, add_json_arg, add_model_arg, print_json

__all__ = ["add_bundles_arg", "add_extra_data_arg", "add_json_arg", "add_model_arg", "print_json"]
