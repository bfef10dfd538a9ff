"""Conventions of the project's command lines: a bad input is one `error:` line and exit code 2."""

import argparse
import sys


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def error_message(exc: Exception) -> str:
    """The message of an input error (a KeyError's key message unquoted)."""
    return str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)


def print_error(exc: Exception) -> None:
    """One `error:` line on stderr, in one write: the ranks of a distributed run share the stream."""
    sys.stderr.write(f"error: {error_message(exc)}\n")
    sys.stderr.flush()
