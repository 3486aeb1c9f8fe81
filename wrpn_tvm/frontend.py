"""Frontend: a checked ExportedProgram (`pt2.load_program`) -> a Relax IRModule.

The program is decomposed to core ATen with PyTorch's table plus `frontend_ops.DECOMPOSITIONS`
(fake-quant ops, which TVM cannot import), then imported with `frontend_ops.CONVERTERS` added to
TVM's converters.
"""

import warnings

from .errors import WrpnError, one_line

# torch 2.13's own run_decompositions deep-copies pytree specs and trips its own deprecation
# warning (copyreg.py:105) on every import; nothing a user can act on.
_TREESPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def _decomposed(program):
    import torch

    from .frontend_ops import DECOMPOSITIONS

    table = torch.export.default_decompositions()
    table.update(DECOMPOSITIONS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TREESPEC_WARNING, category=FutureWarning)
        return program.run_decompositions(table)


def to_relax(program):
    """Import an ExportedProgram into a Relax IRModule with its weights as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    from .frontend_ops import CONVERTERS

    try:
        return from_exported_program(_decomposed(program), keep_params_as_input=False, unwrap_unit_return_tuple=True,
                                     custom_convert_map=CONVERTERS, run_ep_decomposition=False)
    except Exception as err:  # unsupported torch ops surface as assorted exception types
        raise WrpnError(f"cannot import the program into Relax: {one_line(err, last=True)}") from None
