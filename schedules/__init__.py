"""Per-target TIR schedule templates for the bit-serial ops (x86, arm_cpu, cuda)."""
