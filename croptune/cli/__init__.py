"""The `croptune` command line: one entry point, one sub-command per stage.

app.py builds the typer app and registers every command; each command (group) lives in the
module of its name (label.py holds label, relabel and labels export; config.py config show
and init); common.py holds what they share.
"""

from croptune.cli.app import app, main

__all__ = ["app", "main"]
