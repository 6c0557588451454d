"""The ``lizardlm`` command line (:mod:`lizardlm.cli.app`): one module per subcommand, each exposing ``add_parser``."""

from lizardlm.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
