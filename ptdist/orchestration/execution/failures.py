"""The one failure policy of every job, whatever runs it (the job graph, a Tune trial, a Ray
Train worker group):

- a job that raises a ptdist user error (`PtdistError`: a bad config, a missing prompt, data
  without labels...) fails at once, without a retry, and its message reaches the driver: it
  would fail the same way on every attempt;
- a job that raises anything else, or whose worker process dies (killed, out of memory, a lost
  node), is attempted again, up to ``max_failures`` retries: ``max_failures + 1`` attempts in
  all, counted once per job. Worker groups are not retried by Ray Train on their own (its
  ``max_failures`` is 0): the job that started the group is retried instead, so the two layers
  never multiply. Each attempt resumes from the run's last checkpoint in the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdist.errors import PtdistError


def _causes(error: BaseException):
    """``error`` and what it wraps: a Ray task's cause, a worker group's worker failures,
    exception chains."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        todo += [getattr(err, "cause", None), err.__cause__]
        todo += list((getattr(err, "worker_failures", None) or {}).values())


def user_error(error: BaseException) -> PtdistError | None:
    """The ptdist user error ``error`` is or wraps, if any. (A Ray task error is made an
    instance of its cause's class too; the cause itself is what was raised.)"""
    return next((e for e in _causes(error) if isinstance(e, PtdistError)
                 and getattr(e, "cause", None) is None), None)


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line: a user error's own message, or the innermost cause of a
    wrapped error (a Ray task error's text is the whole remote traceback)."""
    user = user_error(error)
    if user is not None:
        return " ".join(str(user).split())
    shown = error
    cause = getattr(error, "cause", None)
    while cause is not None and cause is not shown:
        shown, cause = cause, getattr(cause, "cause", None)
    message = " ".join(str(shown).split())
    return f"{type(shown).__name__}: {message}" if message else type(shown).__name__


@dataclass(frozen=True)
class FailurePolicy:
    max_failures: int = 3  # retries of a job after its first attempt

    @property
    def attempts(self) -> int:
        return self.max_failures + 1

    def retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a job whose ``attempt``-th attempt (1-based) failed with ``error`` runs
        again."""
        return user_error(error) is None and attempt < self.attempts
