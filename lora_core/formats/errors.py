"""The one exception type of the formats package."""
from __future__ import annotations

import os


class LoraFormatError(ValueError):
    """A LoRA file that cannot be used: unreadable, hostile, or holding nonsense tensors.

    `path` is the file, `problem` a one-line description a user can act on. The message names both
    so that a host can show `str(error)` as is.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{os.path.basename(self.path)}: {problem} ({self.path})")
