"""Value objects the library hands out: Entry (one LoRA file), Page (a search result page), ScanReport."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One LoRA file of the library, as indexed.

    name: file stem; rel_name: `folder/name` relative to its library root (no extension);
    alias: the training output name (ss_output_name) or modelspec title, when present.
    summary: header facts (see inspect_header.summarize). user_metadata: the A1111 `.json`
    sidecar; civitai: a trimmed `.civitai.info`. Hashes are None until the background hasher has
    run: sha256 of the whole file; autov2 = sha256[:10]; addnet_sha256 = sha256 of the bytes after
    the safetensors header (kohya/A1111 "addnet" hash; the whole-file sha256 for .pt/.ckpt, as A1111
    does); autov3 = addnet_sha256[:12] (A1111's LoRA short hash). error: why the file is unusable.
    """

    path: str
    name: str
    rel_name: str
    folder: str
    root: str
    ext: str
    size: int
    mtime: float
    alias: str | None = None
    family: str = "unknown"
    algorithm: str = "unknown"
    summary: dict = field(default_factory=dict)
    user_metadata: dict = field(default_factory=dict)
    civitai: dict | None = None
    preview: str | None = None
    sha256: str | None = None
    addnet_sha256: str | None = None
    error: str | None = None
    favorite: bool = False
    user_tags: tuple[str, ...] = ()
    last_used: float | None = None
    base_model: str = ""          # base_models label ("pony", "sdxl", ...; "" unknown), set at index time

    @property
    def autov2(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def autov3(self) -> str | None:
        return self.addnet_sha256[:12] if self.addnet_sha256 else None

    @property
    def activation_text(self) -> str:
        value = self.user_metadata.get("activation text", "")
        return value if isinstance(value, str) else ""

    @property
    def trigger_words(self) -> list[str]:
        """Activation text, Civitai trainedWords and modelspec trigger phrase, in that order."""
        words = []
        if self.activation_text.strip():
            words.append(self.activation_text.strip())
        for word in (self.civitai or {}).get("trainedWords") or []:
            if isinstance(word, str) and word.strip() and word.strip() not in words:
                words.append(word.strip())
        phrase = self.summary.get("trigger_phrase")
        if isinstance(phrase, str) and phrase.strip() and phrase.strip() not in words:
            words.append(phrase.strip())
        return words

    @property
    def preferred_weight(self) -> float | None:
        try:
            value = float(self.user_metadata.get("preferred weight") or 0)
        except (TypeError, ValueError):
            return None
        return value or None

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["user_tags"] = list(self.user_tags)
        data.update(autov2=self.autov2, autov3=self.autov3, trigger_words=self.trigger_words)
        return data


@dataclass(frozen=True)
class Page:
    total: int
    items: list[Entry]
    page: int = 0
    page_size: int = 50


@dataclass
class ScanReport:
    total: int = 0            # LoRA files found
    read: int = 0             # files whose header was read (new or changed)
    sidecars: int = 0         # files whose sidecars alone were re-read
    removed: int = 0          # index rows dropped for files that are gone
    errors: int = 0           # entries with an error
    problems: list[str] = field(default_factory=list)   # scan-level messages (unreadable dirs, storage)
    seconds: float = 0.0
