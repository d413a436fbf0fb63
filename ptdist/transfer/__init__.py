"""Cross-task transfer: the zero-shot transfer matrix and TPT_task with its speed-up."""

from ptdist.transfer.matrix import MatrixResult, transfer_matrix
from ptdist.transfer.selection import best_prompts, resolve_source
from ptdist.transfer.tpt import TptResult, first_reach, run_tpt, speedup_rows

__all__ = ["MatrixResult", "TptResult", "best_prompts", "first_reach", "resolve_source",
           "run_tpt", "speedup_rows", "transfer_matrix"]
