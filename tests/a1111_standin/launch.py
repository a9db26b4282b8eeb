"""Stand-in for webui's `launch` module: the two helpers an extension's install.py uses.

`run_pip` records its commands instead of installing, so tests can see what install.py asked for.
"""
import importlib.util

pip_commands = []


def is_installed(package):
    # The webui checks the distribution metadata first and falls back to an import spec lookup.
    try:
        from importlib.metadata import distribution

        distribution(package)
        return True
    except Exception:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def run_pip(command, desc=None, live=False):
    pip_commands.append((command, desc))
    return ""
