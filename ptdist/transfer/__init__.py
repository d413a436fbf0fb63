"""Cross-task transfer: the zero-shot transfer matrix and TPT_task with its speed-up. Stage
functions: they take the store, their settings and the prompts to work on, and run in this
process; `ptdist.orchestration` decides how they are split into jobs and where those run."""

from ptdist.transfer.matrix import (MatrixResult, MatrixSettings, cells, matrix_sources,
                                    score_target, transfer_matrix, write_matrix)
from ptdist.transfer.tpt import (TptPlan, TptResult, TptSource, first_reach, speedup_rows,
                                 task_plan, tpt_summary)

__all__ = ["MatrixResult", "MatrixSettings", "TptPlan", "TptResult", "TptSource", "cells",
           "first_reach", "matrix_sources", "score_target", "speedup_rows", "task_plan",
           "tpt_summary", "transfer_matrix", "write_matrix"]
