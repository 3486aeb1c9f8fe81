"""aarch64 NEON templates: 4 int32 lanes per q register. LLVM lowers the vector popcount of
uint32 lanes to `cnt vN.16b` (bytes) followed by pairwise widening adds (`uaddlp` .8h, .4s),
which is the NEON bit-serial inner loop; the tests read the generated assembly to keep it so."""

from .cpu import Family

NEON_LANES = 4

TEMPLATES = Family(lanes=lambda _target: NEON_LANES, tuning_lanes=NEON_LANES)
