"""Project errors: one-line messages that name the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose (bad input, failed gate, broken artifact)."""


class DataError(PipelineError):
    """Input data that cannot be used: names the file (or folder) and the problem in one line."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(PipelineError):
    """A configuration file or value that does not validate."""


class GateError(PipelineError):
    """A parity or accuracy gate that failed."""
