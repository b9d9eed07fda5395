"""Finds model versions on disk in TF Serving's layout: ``<base_path>/<integer version>/``."""

from __future__ import annotations

from pathlib import Path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def list_versions(base_path: Path) -> dict[int, Path]:
    """Version number -> directory for every child of ``base_path`` named by an integer.

    Children whose names are not non-negative integers are ignored, as TF Serving does. As a
    convenience, a ``base_path`` that is itself a SavedModel (and has no version folders) is
    served as version 1. A missing ``base_path`` gives no versions.
    """
    if not base_path.is_dir():
        return {}
    versions = {
        int(child.name): child
        for child in base_path.iterdir()
        if child.is_dir() and child.name.isascii() and child.name.isdigit()
    }
    if not versions and any((base_path / f).is_file() for f in SAVED_MODEL_FILES):
        versions[1] = base_path
    return versions
