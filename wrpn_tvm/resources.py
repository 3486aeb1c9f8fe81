"""Files that ship with wrpn-tvm beside its code: the tuning logs and the committed benchmark results.

In a checkout they are `tuning_logs/` and `benchmarks/results/`; a non-editable install carries
them inside the package (setup.py's package data), as `wrpn_tvm/tuning_logs/` and
`wrpn_tvm/benchmark_results/`.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Package-data folder -> where it lies in a checkout.
CHECKOUT_PATHS = {"tuning_logs": "tuning_logs", "benchmark_results": "benchmarks/results"}


def shipped_dir(name: str) -> Path:
    """The folder of shipped files called `name` (a key of CHECKOUT_PATHS), installed or checked out."""
    installed = _PACKAGE / name
    return installed if installed.is_dir() else _PACKAGE.parent / CHECKOUT_PATHS[name]
