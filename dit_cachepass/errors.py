"""Errors shared by the stages and the runtime (a module of its own, so that neither imports the other)."""

from __future__ import annotations


class StageError(RuntimeError):
    """An unexpected error inside one stage of the pass (a bug or a graph it does not know)."""

    def __init__(self, stage: str, err: BaseException):
        super().__init__(f"the {stage} stage failed: {type(err).__name__}: {err}")
        self.stage, self.error = stage, err
