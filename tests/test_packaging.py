"""What a packager or an ops engineer reads before running anything: setup.cfg's Python
range, the licence files, the Dockerfile's rules (parsed: there is no Docker daemon
here)."""
from __future__ import annotations

import configparser
import os

from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def test_python_requires_allows_313_where_tensorflow_has_wheels():
    allowed = SpecifierSet(setup_cfg()["options"]["python_requires"])
    for version in ("3.10", "3.11", "3.12", "3.13"):  # tensorflow-cpu 2.21: cp310-cp313
        assert version in allowed, version
    assert "3.14" not in allowed  # no tensorflow-cpu 2.21 wheel for 3.14
