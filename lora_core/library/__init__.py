"""The LoRA library (no torch): folders -> SQLite index -> names, search, hashes, sidecars."""
from lora_core.library.entry import Entry, Page, ScanReport
from lora_core.library.errors import AmbiguousName, HeaderError, LibraryError, NotFound, StorageError
from lora_core.library.library import Library, default_data_dir
from lora_core.formats.header import read_header

__all__ = [
    "Library", "Entry", "Page", "ScanReport", "default_data_dir", "read_header",
    "LibraryError", "NotFound", "AmbiguousName", "StorageError", "HeaderError",
]
