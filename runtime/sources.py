"""Where a deployment's weights are, as the spec said it: the one value the plan, the weights resolver and the
engines share. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are. `location` is a Hugging Face id or an absolute path."""

    kind: Literal["hub", "local", "gguf", "package"]
    location: str
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.location} ({self.kind})"
