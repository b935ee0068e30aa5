"""The import rule of docs/architecture.md, checked by reading every module's imports
(function-level imports included): each module belongs to one unit, a unit imports
only the units listed for it, and no two modules import each other in a cycle.
The checker is tested too, on module sets with one planted upward, sideways or
circular import."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfmicle", "data_prep", "serving")
STUDIES = ("experiments", "bench")   # scripts over the packages, read by the same rule
TOOL_UNITS = ("train", "export", "import", "score", "serving", "data_prep", "recipes")

# unit: (modules it holds, by exact name or as a package prefix; units it may import)
FOUNDATION = ("tfmicle", "tfmicle.cli", "tfmicle.config", "tfmicle.tasks", "tfmicle.model_format",
              "tfmicle.model_load", "tfmicle.fileio", "tfmicle.imagefiles", "tfmicle.csvfiles",
              "tfmicle.overlay", "tfmicle.data", "tfmicle.data.records", "tfmicle.caseindex",
              "tfmicle.model_card")
UNITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # names and formats everyone shares; no TensorFlow at import time except records
    "foundation": (FOUNDATION, ()),
    # raw data -> records: the schema, the task names and the CLI helpers only
    "data_prep": (("data_prep",), ("foundation",)),
    # the library: data pipelines, models, losses, optimizers, metrics
    "library": (("tfmicle.data.augment", "tfmicle.data.pipeline", "tfmicle.data.ph2",
                 "tfmicle.data.tfds_source",
                 "tfmicle.retrieval", "tfmicle.probe", "tfmicle.calibration", "tfmicle.models",
                 "tfmicle.losses", "tfmicle.optim", "tfmicle.metrics", "tfmicle.distribute"),
                ("foundation",)),
    # configs to objects, and the run folders both trainers write and the tools read
    "runs": (("tfmicle.build", "tfmicle.rundir"), ("library", "foundation")),
    # the tools: none imports another
    "train": (("tfmicle.train",), ("runs", "library", "foundation")),
    "export": (("tfmicle.export",), ("runs", "library", "foundation")),
    "import": (("tfmicle.import_checkpoint",), ("runs", "library", "foundation")),
    # the index tool (python -m tfmicle.index) is the same batch inference as scoring
    "score": (("tfmicle.score", "tfmicle.index"), ("library", "foundation")),
    "serving": (("serving",), ("foundation",)),
    # the whole recipe end to end
    # (it drives the tools as a user does, through `python -m`, and imports none of them)
    "recipes": (("tfmicle.demo", "tfmicle.demo_ham10000", "tfmicle.demo_steps"), ("runs", "library", "foundation")),
    # studies and benchmarks may use any package, as a user's script would; nothing in
    # the packages imports them, and neither imports the other
    "experiments": (("experiments",), TOOL_UNITS + ("runs", "library", "foundation")),
    "bench": (("bench",), TOOL_UNITS + ("runs", "library", "foundation")),
}
PACKAGE_NAMES = {"tfmicle", "tfmicle.data"}  # these hold only their own __init__


def unit_of(module: str) -> str | None:
    best, unit = "", None
    for name, (members, _) in UNITS.items():
        for m in members:
            exact_only = m in PACKAGE_NAMES
            if (module == m or (not exact_only and module.startswith(m + "."))) and \
                    len(m) > len(best):
                best, unit = m, name
    return unit


def read_modules(root: str = ROOT) -> dict[str, str]:
    """{dotted module name: source} of the three packages, experiments/ and bench/."""
    out = {}
    for pkg in PACKAGES + STUDIES:
        for d, _, files in os.walk(os.path.join(root, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep, ".")
                    name = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        out[name] = fh.read()
    return out


def imports_of(name: str, source: str, known: set[str]) -> set[str]:
    """The known modules a module imports (anywhere in it), relative imports resolved."""
    is_pkg = name in known and any(k.startswith(name + ".") for k in known) or \
        name in PACKAGES
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()

    def deepest(dotted: str) -> str | None:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            cand = ".".join(parts[:i])
            if cand in known:
                return cand
        return None

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here.split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]  # a submodule, else base
        else:
            continue
        for t in targets:
            m = deepest(t)
            if m is not None and m != name:
                found.add(m)
    return found


def violations(modules: dict[str, str]) -> list[str]:
    known = set(modules)
    graph = {n: imports_of(n, src, known) for n, src in modules.items()}
    problems = []
    for name, deps in sorted(graph.items()):
        unit = unit_of(name)
        if unit is None:
            problems.append(f"{name}: in no unit (add it to UNITS and docs/architecture.md)")
            continue
        allowed = set(UNITS[unit][1]) | {unit}
        for dep in sorted(deps):
            dep_unit = unit_of(dep)
            if dep_unit is not None and dep_unit not in allowed:
                problems.append(f"{name} ({unit}) imports {dep} ({dep_unit})")
    # cycles between modules (a unit may import itself, but not round in a circle); a
    # module's own parent packages do not count: importing a module imports them anyway
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return problems


def test_every_module_imports_only_downward_and_without_cycles():
    modules = read_modules()
    assert "tfmicle.rundir" in modules and "serving.app" in modules  # it read the tree
    assert "experiments.ham_micle" in modules and "bench.pipeline" in modules
    assert violations(modules) == []


def test_tools_import_what_the_map_says():
    """A few edges the map promises, read from the real tree (a checker that saw no
    imports would pass the test above)."""
    modules = read_modules()
    graph = {n: imports_of(n, s, set(modules)) for n, s in modules.items()}
    assert "tfmicle.rundir" in graph["tfmicle.export"]
    assert "tfmicle.model_load" in graph["serving.model"]
    assert "tfmicle.model_load" in graph["tfmicle.score.model"]
    assert "tfmicle.model_format" in graph["tfmicle.model_load"]
    assert "tfmicle.imagefiles" in graph["tfmicle.score.sources"]
    assert "tfmicle.csvfiles" in graph["tfmicle.score.sources"]
    assert "tfmicle.imagefiles" in graph["data_prep.cases"]
    assert "tfmicle.csvfiles" in graph["data_prep.formats"]
    assert "tfmicle.imagefiles" in graph["serving.images"]


def test_only_data_prep_imports_data_prep():
    """The image and CSV rules live in the foundation (tfmicle.imagefiles,
    tfmicle.csvfiles): no tfmicle or serving module reaches into data_prep for them."""
    modules = read_modules()
    graph = {n: imports_of(n, s, set(modules)) for n, s in modules.items()}
    reach = {n: sorted(d for d in deps if d == "data_prep" or d.startswith("data_prep."))
             for n, deps in graph.items()
             if unit_of(n) not in ("data_prep", "experiments", "bench")}
    assert {n: d for n, d in reach.items() if d} == {}
    for unit in ("foundation", "library", "runs", "train", "export", "import", "score", "serving",
                 "recipes"):
        assert "data_prep" not in UNITS[unit][1], unit
    assert "tfmicle.data.records" in graph["data_prep.convert"]


TOY = {
    "tfmicle": "", "tfmicle.model_format": "import os\n",
    "tfmicle.rundir": "from tfmicle import model_format\n",
    "tfmicle.train": "", "tfmicle.train.finetune": "from tfmicle import rundir\n",
    "tfmicle.export": "from tfmicle.rundir import load_classifier\n",
    "serving": "", "serving.app": "from . import model\n",
    "serving.model": "from tfmicle.model_format import read_labels\n",
    "tfmicle.score": "", "tfmicle.score.sources": "from tfmicle.imagefiles import load_image\n",
    "tfmicle.imagefiles": "", "serving.images": "from tfmicle.imagefiles import sniff\n",
    "data_prep": "", "data_prep.images": "", "data_prep.manifest": "",
    "experiments": "", "experiments.study": "from tfmicle import model_format\n",
    "bench.pipeline": "from data_prep import images\n",
}


def test_the_toy_tree_is_clean():
    assert violations(TOY) == []


@pytest.mark.parametrize("module,source,words", [
    ("tfmicle.rundir", "def f():\n    from tfmicle import train\n",
     "tfmicle.rundir (runs) imports tfmicle.train (train)"),
    ("tfmicle.export", "from tfmicle.train.finetune import x\n",
     "tfmicle.export (export) imports tfmicle.train.finetune (train)"),
    ("serving.model", "from tfmicle import rundir\n",
     "serving.model (serving) imports tfmicle.rundir (runs)"),
    ("serving.model", "from .app import create_app\n", "import cycle: serving.app -> serving.model"),
    ("tfmicle.score.sources", "from data_prep.images import load_image\n",
     "tfmicle.score.sources (score) imports data_prep.images (data_prep)"),
    ("serving.images", "import data_prep.manifest\n",
     "serving.images (serving) imports data_prep.manifest (data_prep)"),
    ("tfmicle.newthing", "", "tfmicle.newthing: in no unit"),
    ("tfmicle.rundir", "from experiments import study\n",
     "tfmicle.rundir (runs) imports experiments.study (experiments)"),
    ("serving.app", "import bench.pipeline\n",
     "serving.app (serving) imports bench.pipeline (bench)"),
    ("bench.pipeline", "from experiments.study import x\n",
     "bench.pipeline (bench) imports experiments.study (experiments)"),
])
def test_one_planted_bad_import_is_caught(module, source, words):
    tree = dict(TOY)
    tree[module] = tree.get(module, "") + source
    found = violations(tree)
    assert len(found) == 1 and found[0].startswith(words), found
