"""The ``lizardlm`` command line (:mod:`lizardlm.cli.main`): one module per subcommand, each exposing ``add_parser``."""

from lizardlm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
