"""Counts x cycles: each kernel's cycles in one inference, and its latency on a board.

cycles(kernel) = sum over the kernel's basic blocks of executions(block) x cycles per iteration
(llvm-mca's steady state of the block run as a loop). Latency at T threads = (serial cycles +
parallel cycles / T) / clock: a parallel loop's iterations split evenly over the threads, with no
cost for starting them and no load imbalance.
"""

from bisect import bisect_right
from dataclasses import dataclass


@dataclass
class KernelCycles:
    name: str
    calls: int  # how many times the kernel ran in one inference
    serial: float  # cycles outside parallel loops
    parallel: float  # cycles inside them
    instructions: int  # instructions executed

    def latency_ms(self, clock_ghz: float, threads: int) -> float:
        return (self.serial + self.parallel / threads) / (clock_ghz * 1e6)


def instruction_counts(code: list, counted_blocks: list) -> list:
    """Executions of each instruction (in `code`'s order), from the counted (first, last, count) blocks."""
    addresses = [insn.address for insn in code]
    delta = [0] * (len(code) + 1)
    for first, last, count in counted_blocks:
        begin, end = bisect_right(addresses, first - 1), bisect_right(addresses, last)
        if begin < end:
            delta[begin] += count
            delta[end] -= count
    counts, running = [], 0
    for step in delta[:-1]:
        running += step
        counts.append(running)
    return counts


def kernel_cycles(blocks: list, executions: list, cycles: list) -> list:
    """Per kernel, in order of first appearance in the library: calls, cycles and instructions.
    `executions[i]` is how many times block i ran (its first instruction's count)."""
    kernels = {}
    for block, runs, per_iteration in zip(blocks, executions, cycles):
        if runs == 0:
            continue
        kernel = kernels.setdefault(block.kernel, KernelCycles(block.kernel, 0, 0.0, 0.0, 0))
        spent = runs * per_iteration
        if block.parallel:
            kernel.parallel += spent
        else:
            kernel.serial += spent
        kernel.instructions += runs * len(block.instructions)
        if block.is_entry:
            kernel.calls += runs
    return list(kernels.values())
