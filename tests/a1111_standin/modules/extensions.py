"""Stand-in for `modules.extensions`: the installed extensions, their metadata.ini, and which
extension a file belongs to.

As in the webui: built-in extensions (every folder of `paths_internal.extensions_builtin_dir`)
come first, then user extensions, each group sorted by folder name; an extension's canonical name
is its folder name in lower case; `enabled` is "folder name not in opts.disabled_extensions";
`active()` are the enabled ones. Each extension's `metadata.config` is a ConfigParser read from its
metadata.ini (empty without one) and may carry `[callbacks/<callback name>]` sections with
`Before`/`After` lists that `script_callbacks.sort_callbacks` honours.

Differences: user extensions are handed in as a list of folders (anywhere on disk) instead of being
listed from `<data_path>/extensions`, and `extension_paths` is keyed by the real path.
"""
import configparser
import dataclasses
import os
import re

from modules import errors, paths_internal, shared

extensions = []
extension_paths = {}
loaded_extensions = {}


def active():
    if getattr(shared.cmd_opts, "disable_all_extensions", False) or shared.opts.disable_all_extensions == "all":
        return []
    if getattr(shared.cmd_opts, "disable_extra_extensions", False) or shared.opts.disable_all_extensions == "extra":
        return [x for x in extensions if x.enabled and x.is_builtin]
    return [x for x in extensions if x.enabled]


@dataclasses.dataclass
class CallbackOrderInfo:
    name: str
    before: list
    after: list


class ExtensionMetadata:
    filename = "metadata.ini"

    def __init__(self, path, canonical_name):
        self.config = configparser.ConfigParser()
        try:
            self.config.read(os.path.join(path, self.filename))  # a missing file reads as empty
        except Exception:
            errors.report(f"Error reading {self.filename} for extension {canonical_name}.", exc_info=True)
        # The webui reads [Extension] Name but then uses the folder name anyway.
        self.canonical_name = canonical_name.lower().strip()
        self.requires = None

    @staticmethod
    def parse_list(text):
        """'a b, c ' -> ['a', 'b', 'c'] (commas and blanks both separate)."""
        return [x for x in re.split(r"[,\s]+", text.strip()) if x] if text else []

    def get_script_requirements(self, field, section, extra_section=None):
        text = self.config.get(section, field, fallback="")
        if extra_section:
            text += ", " + self.config.get(extra_section, field, fallback="")
        return self.parse_list(text.lower())

    def list_callback_order_instructions(self):
        for section in self.config.sections():
            if not section.startswith("callbacks/"):
                continue
            callback_name = section[len("callbacks/"):]
            if not callback_name.startswith(self.canonical_name):
                errors.report(f"Callback order section for extension {self.canonical_name} is referencing "
                              f"the wrong extension: {section}")
                continue
            yield CallbackOrderInfo(callback_name,
                                    self.parse_list(self.config.get(section, "Before", fallback="")),
                                    self.parse_list(self.config.get(section, "After", fallback="")))


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False, metadata=None):
        self.name = name
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin
        self.status = ""
        self.metadata = metadata if metadata is not None else ExtensionMetadata(path, name.lower())
        self.canonical_name = self.metadata.canonical_name

    def __repr__(self):
        return f"Extension({self.name!r}, builtin={self.is_builtin}, enabled={self.enabled})"


def _folders(root):
    if not root or not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]


def list_extensions(user_extension_dirs=()):
    """Built-ins from paths_internal.extensions_builtin_dir, then `user_extension_dirs`."""
    extensions.clear()
    extension_paths.clear()
    loaded_extensions.clear()
    user = sorted((str(d) for d in user_extension_dirs), key=os.path.basename)
    disabled = set(shared.opts.disabled_extensions or [])
    for is_builtin, folders in ((True, _folders(paths_internal.extensions_builtin_dir)), (False, user)):
        for path in folders:
            dirname = os.path.basename(path)
            metadata = ExtensionMetadata(path, dirname)
            if metadata.canonical_name in loaded_extensions:
                errors.report(f'Duplicate canonical name "{dirname}" found in extensions "{dirname}" and '
                              f'"{loaded_extensions[metadata.canonical_name].name}". Former will be discarded.')
                continue
            extension = Extension(dirname, path, enabled=dirname not in disabled, is_builtin=is_builtin,
                                  metadata=metadata)
            extensions.append(extension)
            extension_paths[os.path.realpath(path)] = extension
            loaded_extensions[metadata.canonical_name] = extension


def find_extension(filename):
    """The extension whose folder holds `filename` (a script or module file), or None."""
    folder = os.path.dirname(os.path.realpath(filename))
    while True:
        if folder in extension_paths:
            return extension_paths[folder]
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
