"""One error contract for every CLI: each tool's user mistake is a tfmicle.cli.UsageError
(one line on stderr, exit 2, caught once in cli.run), and every other exception class of
the packages is one a reader can see is not a user mistake (listed below with why)."""
from __future__ import annotations

import ast
import importlib
import os

import pytest

from tfmicle import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# exception classes that are deliberately not "print one line, exit 2"
NOT_USER_ERRORS = {
    "tfmicle.imagefiles.kinds.ImageError": "one image's skip reason (data_prep, score) or a 4xx",
    "tfmicle.train.runner.NaNLossError": "training diverged: exit 1, the run folder is kept",
    "serving.model.ModelLoadError": "one version folder refused; the server keeps serving",
    "tfmicle.model_load.ContractError": "a model that breaks the contract; each tool turns it into "
                                        "its own (serving: ModelLoadError, score: ScoreError)",
    "serving.errors.ApiError": "an HTTP 4xx answer, not a CLI exit",
    "serving.errors.BodyTooLarge": "an HTTP 413 answer",
    "tfmicle.model_card.store.CardUnreadable": "a damaged card file: score's --model-card "
                                               "turns it into its one-line error, serving "
                                               "into an HTTP error for that route",
}


def exception_classes() -> list[str]:
    """Dotted names of every class in the three packages whose bases name an Error,
    Exception or Mismatch (found by reading the source, so a new one cannot hide)."""
    found = []
    for pkg in ("tfmicle", "data_prep", "serving"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mod = mod[:-len(".__init__")] if mod.endswith(".__init__") else mod
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, ast.ClassDef) and any(
                            ast.unparse(b).endswith(("Error", "Exception", "Mismatch", "Path"))
                            for b in node.bases):
                        found.append(f"{mod}.{node.name}")
    return found


def load(dotted: str) -> type:
    mod, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(mod), name)


def test_every_exception_class_is_a_usage_error_or_listed_with_why():
    classes = exception_classes()
    assert len(classes) >= 12, classes   # the scan sees the packages
    stray = [c for c in classes if c not in NOT_USER_ERRORS
             and not issubclass(load(c), cli.UsageError)]
    assert not stray, f"neither a cli.UsageError nor listed in NOT_USER_ERRORS: {stray}"
    for c in NOT_USER_ERRORS:
        assert c in classes, f"{c} is listed but no longer exists"
        assert not issubclass(load(c), cli.UsageError), c


@pytest.mark.parametrize("dotted", [
    "tfmicle.config.ConfigError", "tfmicle.distribute.StrategyError",
    "tfmicle.score.model.ScoreError", "tfmicle.data.tfds_source.TfdsError",
    "tfmicle.models.simclr_tf1.CheckpointMismatch", "tfmicle.csvfiles.CsvError",
    "tfmicle.fileio.UnsupportedPath", "data_prep.errors.UserError",
    "data_prep.errors.StrictError", "serving.repository.NoModelError",
    "tfmicle.caseindex.store.IndexMismatchError", "tfmicle.caseindex.store.IndexMissingError",
    "tfmicle.caseindex.store.IndexIncompleteError"])
def test_each_tools_user_error_exits_2_with_one_line_through_cli_run(dotted, capsys):
    error = load(dotted)

    def body():
        raise error("the input is wrong\nsecond line that must not print")
    assert cli.run("prog", body) == 2
    err = capsys.readouterr().err
    assert err == "prog: error: the input is wrong\n"


def test_cli_run_lets_a_bug_through_and_keeps_exit_codes():
    def bug():
        raise KeyError("not a user mistake")
    with pytest.raises(KeyError):
        cli.run("prog", bug)
    assert cli.run("prog", lambda: 3) == 3
    assert cli.run("prog", lambda: None) == 0


def test_no_cli_rewraps_one_user_error_into_another():
    """`except SomeUserError: raise cli.UsageError(str(e))` chains are gone: the one catch
    in cli.run sees them all."""
    users = {c.rsplit(".", 1)[1] for c in exception_classes() if c not in NOT_USER_ERRORS}
    users.add("UsageError")
    offenders = []
    for pkg in ("tfmicle", "data_prep", "serving"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in (f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, f)
                for node in ast.walk(ast.parse(open(path).read())):
                    if not isinstance(node, ast.ExceptHandler) or node.type is None:
                        continue
                    caught = {ast.unparse(t).rsplit(".", 1)[-1] for t in (
                        node.type.elts if isinstance(node.type, ast.Tuple) else [node.type])}
                    if not caught <= users:
                        continue
                    for sub in ast.walk(node):
                        if isinstance(sub, ast.Raise) and isinstance(sub.exc, ast.Call) and \
                                ast.unparse(sub.exc.func).rsplit(".", 1)[-1] in users:
                            offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not offenders, offenders
