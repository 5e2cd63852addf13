"""Deprecated: the ``explain`` command moved to :mod:`contextual_loss.cli.explain_command`."""

from contextual_loss._deprecation import moved

__getattr__ = moved(__name__, {"*": "contextual_loss.cli.explain_command"})
