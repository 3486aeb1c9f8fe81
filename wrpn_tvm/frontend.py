"""Frontend: a checked ExportedProgram (`pt2.load_program`) -> a Relax IRModule."""

from .errors import WrpnError, one_line


def to_relax(program):
    """Import an ExportedProgram into a Relax IRModule with its weights as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(program, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    except Exception as err:  # unsupported torch ops surface as assorted exception types
        raise WrpnError(f"cannot import the program into Relax: {one_line(err, last=True)}") from None
