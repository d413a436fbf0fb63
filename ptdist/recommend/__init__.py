"""Which stored prompt should a new task start from: the candidate source prompts for a task
that has no prompt yet (the store's, files and adapters, other models' projected), ranked by
their zero-shot score on the task's training rows and, with a short probe run, by the
indicator the store's correlation study ranks best (`ranking`); then, on request, checked by
TPT from the top sources (`tpt`). A stage function like the transfer matrix's: store, settings
and candidates in, results out, in this process (no Ray). docs/recommend.md."""

from ptdist.recommend.candidates import Candidate, gather
from ptdist.recommend.recommendation import (Recommendation, RecommendSettings, recommend,
                                             study_settings, train_probe, write_recommendation)

__all__ = ["Candidate", "RecommendSettings", "Recommendation", "gather", "recommend",
           "study_settings", "train_probe", "write_recommendation"]
