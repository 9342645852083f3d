"""Case-insensitive file lookup: copies of DISFA differ in the case of ``_comp`` / ``_Comp``."""

from pathlib import Path


def find_child(folder, name):
    """Return ``folder/<name>`` matched case-insensitively, or None."""
    folder = Path(folder)
    exact = folder / name
    if exact.exists():
        return exact
    if not folder.is_dir():
        return None
    low = name.lower()
    for child in folder.iterdir():
        if child.name.lower() == low:
            return child
    return None


def children_by_lower_name(folder):
    """Return ``{name.lower(): path}`` of a folder's entries ({} when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in folder.iterdir()}
