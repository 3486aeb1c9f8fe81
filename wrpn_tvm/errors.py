"""The one exception type a user ever sees: the CLI prints its message as one line and exits 1."""


class WrpnError(Exception):
    """A user-facing error (bad path, bad bit width, unknown target, unreachable device, ...)."""
