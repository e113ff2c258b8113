"""The ``privtrain`` command: Ctrl-C while the CLI is still loading exits quietly (130)."""

from __future__ import annotations


def main() -> int:
    """Load and run :func:`privtrain.platform.cli.main`; returns the exit code."""
    try:
        from privtrain.platform.cli import main as cli_main
    except KeyboardInterrupt:
        return 130
    return cli_main()
