"""The ``privtrain`` command: Ctrl-C while the CLI is still loading exits quietly (130)."""

from __future__ import annotations


def main() -> int:
    """Load and run :func:`privtrain.platform.cli.main`; returns the exit code."""
    try:
        from privtrain.platform.cli import main as cli_main

        # main() turns Ctrl-C into 130 once a command runs; this covers loading it.
        return cli_main()
    except KeyboardInterrupt:
        return 130
