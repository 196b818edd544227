"""Errors that reach the user as one line: what is wrong, and the fix."""

from __future__ import annotations


class GpusentryError(Exception):
    """A problem the user can fix before running again (a bad flag, file or setting, a missing
    privilege or kernel feature). `str()` is the one line shown; `exit_code` the status."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}; fix: {self.fix}" if self.fix else self.problem


class UsageError(GpusentryError):
    """Bad flags or configuration values."""


class RuntimeFailure(GpusentryError):
    """Something failed while running: a part of the agent died, the API server did not start."""

    exit_code = 1
