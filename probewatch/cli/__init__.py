"""The `probewatch` command line. One module per command group; `main.COMMAND_MODULES` lists them."""
