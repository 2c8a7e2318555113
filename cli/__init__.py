"""The `rstar` command-line interface."""
