"""The `lora` extra network object the webui calls around every generation."""
from __future__ import annotations

from typing import Any


def make_network_class(base: type) -> type:
    """Subclass of the webui's `ExtraNetwork` (passed in, so this package never imports `modules`)."""

    class LoraCoreNetwork(base):
        """`<lora:...>` / `<lyco:...>`: the webui calls `activate(p, params_list)` for every batch
        (an empty list when the prompt has no such tag) and `deactivate(p)` after the batches."""

        def __init__(self, host: Any):
            super().__init__("lora")
            self.host = host

        def activate(self, p, params_list):
            self.host.activate(p, params_list)

        def deactivate(self, p):
            self.host.deactivate(p)

    return LoraCoreNetwork
