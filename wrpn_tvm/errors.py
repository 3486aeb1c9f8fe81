"""The one exception type a user ever sees (the CLI prints its message as one line and exits 1),
and the one way an underlying library's exception becomes such a line."""


class WrpnError(Exception):
    """A user-facing error (bad path, bad bit width, unknown target, unreachable device, ...)."""


def one_line(err: BaseException, last: bool = False, limit: "int | None" = None) -> str:
    """An exception's message on one line: its first non-blank line, or its last with `last` (TVM
    puts the reason after its own traceback); at most `limit` characters; the type when empty."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = (lines[-1] if last else lines[0]) if lines else type(err).__name__
    return text[:limit] if limit else text
