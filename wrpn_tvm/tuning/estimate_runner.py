"""Tuning for a Raspberry Pi with no board attached: candidates ranked by their estimated run time.

`wrpn-tvm tune --target rasp4 --estimate` runs no candidate on a device: EstimateRunner returns,
for each built candidate, the seconds `wrpn_tvm.estimate` predicts for one call on the target's
board (a counting run under qemu-user for exact trip counts, times llvm-mca 14 cycles per block
on the board core's model, at its stock clock and on all its cores). A batch shares one counting
run, whose start-up (the aarch64 Python under qemu) is most of its cost.

What the estimate leaves out (cache misses, memory bandwidth, thread start-up and imbalance) it
leaves out for every candidate alike, so it ranks schedules by their instruction mix and trip
counts: good at telling a vectorized, well-unrolled inner loop from a poor one, blind to a tiling
that only pays off in cache. Records of such a job are estimates, and the log says so
(log_timing.py); measured and estimated records never share a log.
"""

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

from ..errors import WrpnError
from ..estimate import BOARDS, estimate_kernels
from ..estimate.boards import Board
from ..targets import TargetSpec

# Seconds a batch's counting run may take: qemu's start-up, then each candidate under the counter.
STARTUP_TIMEOUT_S = 120
PER_CANDIDATE_TIMEOUT_S = 120


def board_for(spec: TargetSpec) -> Board:
    """The board whose core estimates spec's candidates; only the Raspberry Pi presets have one."""
    if spec.name not in BOARDS:
        raise WrpnError(f"--estimate ranks candidates by the estimated time on a Raspberry Pi: use --target "
                        f"{', '.join(BOARDS)} (not {spec.name}), or measure on a device without --estimate")
    return BOARDS[spec.name]


def check_tools() -> None:
    """Fail before tuning, not on the first batch, where the estimate cannot run here."""
    from ..estimate import counting, mca
    from ..remote import emulator

    if not emulator.is_prepared():
        raise WrpnError("--estimate needs the emulated device for its counting runs: run scripts/setup.sh")
    mca.llvm_mca()
    counting.plugin()


@derived_object
class EstimatedFuture(PyRunnerFuture):
    def __init__(self, seconds: "float | None", error: "str | None"):
        super().__init__()
        self.seconds = seconds
        self.error = error

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return RunnerResult(None if self.seconds is None else [self.seconds], self.error)


@derived_object
class EstimateRunner(PyRunner):
    """Answers each candidate with its estimated seconds on `board` at `threads` threads."""

    def __init__(self, board: Board, threads: int):
        super().__init__()
        self.board = board
        self.threads = threads

    def run(self, runner_inputs) -> list:
        jobs = [(str(item.artifact_path), [info.as_json() for info in item.args_info]) for item in runner_inputs]
        try:
            estimates = estimate_kernels(jobs, self.board, self.threads,
                                         STARTUP_TIMEOUT_S + PER_CANDIDATE_TIMEOUT_S * len(jobs))
        except WrpnError as err:  # recorded as failed candidates, as a device error would be
            return [EstimatedFuture(None, f"estimate failed: {err}") for _ in jobs]
        return [EstimatedFuture(e.seconds, None if e.error is None else f"estimate failed: {e.error}") for e in estimates]

    def describe(self) -> str:
        board = self.board
        return f"ESTIMATED for {board.name} ({board.core} at {board.clock_ghz} GHz, {self.threads} threads; no board)"
