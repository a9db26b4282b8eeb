"""Last resort: whatever `formats.keys` still understands (LDM names without prefix, ...).
A file no layout, not even this one, makes one module of is refused naming what it looks like."""
from __future__ import annotations

from .base import Layout


class Other(Layout):
    name = "other"
    label = "other spellings formats.keys understands"

    def owns(self, key):
        return True


LAYOUT = Other()
