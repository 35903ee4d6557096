"""Public functions carry numpydoc ``Parameters`` and ``Returns`` sections.

Every function named in a module's ``__all__`` (and defined there) in the packages and
modules of ``DOCUMENTED`` must document each of its parameters under a ``Parameters``
heading and, when it returns a value, have a ``Returns`` (or ``Yields``) section.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap

import pytest

#: packages (every module below them) and single modules whose public functions are checked
DOCUMENTED = ["pipeline"]

SECTION = re.compile(r"^(?P<name>[A-Z][A-Za-z ]+)\n-{5,}$", re.MULTILINE)
SKIPPED_KINDS = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}


def module_names(entry: str) -> list[str]:
    """The module ``entry`` itself and, for a package, every module below it."""
    try:
        module = importlib.import_module(entry)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "pipeline":
            raise
        return [entry]  # reported as skipped by the test
    names = [entry]
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=entry + "."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it would run the CLI
                names.append(info.name)
    return names


def import_optional(name: str):
    """Import ``name``, skipping it when it needs an optional package that is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "pipeline":
            raise
        pytest.skip(f"{name} needs {error.name}, which is not installed")


def sections(doc: str) -> dict[str, str]:
    """Map each numpydoc section heading of a dedented docstring to its body."""
    found = {}
    matches = list(SECTION.finditer(doc))
    ends = [match.start() for match in matches[1:]] + [len(doc)]
    for match, end in zip(matches, ends[: len(matches)], strict=True):
        found[match["name"].strip()] = doc[match.end() : end]
    return found


def documented_names(body: str) -> set[str]:
    """Parameter names on the unindented ``name : type`` (or ``a, b : type``) lines."""
    names = set()
    for line in body.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        for name in line.split(" : ")[0].rstrip(":").split(","):
            names.add(name.strip().lstrip("*"))
    return names


def returns_value(function) -> bool:
    """Whether ``function`` is annotated to return something, or has a ``return <value>``."""
    annotation = inspect.signature(function).return_annotation
    if annotation is not inspect.Signature.empty and annotation not in (None, "None"):
        return True
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Return) and child.value is not None:
                if not (isinstance(child.value, ast.Constant) and child.value.value is None):
                    return True
            if walk(child):
                return True
        return False

    return walk(definition)


def problems(function) -> list[str]:
    """What the docstring of ``function`` lacks."""
    doc = inspect.cleandoc(function.__doc__ or "")
    found = sections(doc)
    missing = []
    parameters = [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if name not in ("self", "cls") and parameter.kind not in SKIPPED_KINDS
    ]
    if parameters:
        if "Parameters" not in found:
            missing.append("no Parameters section")
        else:
            undocumented = set(parameters) - documented_names(found["Parameters"])
            if undocumented:
                missing.append(f"parameters not documented: {sorted(undocumented)}")
    if returns_value(function) and not ({"Returns", "Yields"} & set(found)):
        missing.append("no Returns section")
    return missing


MODULES = sorted({name for entry in DOCUMENTED for name in module_names(entry)})


@pytest.mark.parametrize("module_name", MODULES)
def test_public_functions_have_numpydoc_sections(module_name):
    module = import_optional(module_name)
    report = []
    for name in getattr(module, "__all__", []):
        function = getattr(module, name)
        if not inspect.isfunction(function) or function.__module__ != module.__name__:
            continue
        report.extend(f"{module_name}.{name}: {problem}" for problem in problems(function))
    assert report == [], "\n".join(report)


def test_checker_catches_a_bare_docstring():
    """The control: a function without sections fails, the documented one passes."""

    def bare(frames, fps):
        """Resize frames."""
        return frames

    def documented(frames, fps):
        """Resize frames.

        Parameters
        ----------
        frames : ndarray of shape (n, h, w, 3), uint8
            The frames.
        fps : float
            Frames per second.

        Returns
        -------
        ndarray
            The frames.
        """
        return frames

    assert problems(bare) == ["no Parameters section", "no Returns section"]
    assert problems(documented) == []


def test_entries_are_modules_or_packages():
    """A top-level module stands for itself; a package for every module below it."""
    assert module_names("pipeline.stores") == ["pipeline.stores"]
    below = module_names("pipeline.reconstructors")
    assert below[0] == "pipeline.reconstructors"
    assert "pipeline.reconstructors.layers" in below
    assert all(name.startswith("pipeline.reconstructors") for name in below)
