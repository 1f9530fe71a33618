"""rpg-train: training networks built from Recurrent Parameter Generators."""
from __future__ import annotations


def _version() -> str:
    """The installed distribution's version; from a checkout on the path without an install,
    the one pyproject.toml declares."""
    import importlib.metadata
    import re
    from pathlib import Path

    try:
        return importlib.metadata.version("rpg-train")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        found = pyproject.is_file() and re.search(r'^version = "([^"]+)"',
                                                  pyproject.read_text(), re.M)
        return found.group(1) if found else "unknown"


__version__ = _version()
