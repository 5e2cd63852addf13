"""Deprecated: the ``demo`` command moved to :mod:`contextual_loss.cli.demo_command`."""

from contextual_loss._deprecation import moved

__getattr__ = moved(__name__, {"*": "contextual_loss.cli.demo_command"})
