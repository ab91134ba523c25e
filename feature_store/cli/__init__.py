"""`feature-store` command line (commands) and how it shows results (render)."""

from feature_store.cli.commands import main

__all__ = ["main"]
