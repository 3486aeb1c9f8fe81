"""Writing files so that a failure never leaves half a file or clobbers the one that was there."""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike"):
    """Yields a path with `path`'s name in a fresh folder beside it (same file system, same
    suffix, for writers that go by the suffix); moved over `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".wrpn-") as folder:
        staged = Path(folder) / path.name
        yield staged
        os.replace(staged, path)


def write_text_atomic(path: "str | os.PathLike", text: str) -> None:
    with atomic_path(path) as staged:
        staged.write_text(text)
