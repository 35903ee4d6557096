"""The software environment: the locked versions, the installed ones, the conda env files.

``requirements.lock`` pins every package (dependencies of dependencies
included) that pyproject's ranges resolve to for Python 3.11 on Linux
x86_64. It is written by ``make lock`` (``uv pip compile``, one package a
line with ``# via`` the packages that need it), and ``make demo`` / ``make
test`` install with it as a pip constraints file, so a fresh clone gets what
CI tested. The conda env files under ``envs/`` install the same PyPI wheels
through their ``pip:`` section: their top-level packages, then every
dependency of those, marked ``# via``; ``python -m pipeline sync-envs``
rewrites them from the lock (``make lock`` runs it).

Only the standard library is imported here: ``make lock`` runs this module
before any virtual environment exists.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

from pipeline.errors import PipelineError

__all__ = [
    "KEY_PACKAGES",
    "LOCK",
    "env_file_text",
    "installed_versions",
    "lock_drift",
    "normalize",
    "read_lock",
    "versions_table",
]

#: The repository's lock file (absent when the package is installed without its sources).
LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"

#: Packages whose versions every store records in its provenance and ``versions`` prints.
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "open-clip-torch",
    "peft",
    "huggingface-hub",
    "safetensors",
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "opencv-python-headless",
    "av",
    "pillow",
    "zarr",
    "nibabel",
    "snakemake",
)

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)")
_VIA = re.compile(r"#\s*via\s+(?P<via>.*)$")
#: ``- name @ git+https://…@<40-hex commit>``: a package the lock cannot hold, pinned by commit
_GIT_ENTRY = re.compile(r"^\s+- [A-Za-z0-9._-]+ @ git\+https://\S+@[0-9a-f]{40}$")
_PIP_ENTRY = re.compile(r"^\s+- (?P<pin>[^\s#]+)(?P<via>\s+#\s*via\b.*)?$")


def normalize(name: str) -> str:
    """A distribution name in its PEP 503 form (``Open_CLIP.torch`` → ``open-clip-torch``).

    Parameters
    ----------
    name : str
        A distribution name as written anywhere.

    Returns
    -------
    str
        Lower case, runs of ``-``, ``_`` and ``.`` replaced by one ``-``.
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | os.PathLike = LOCK) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """The lock's pins.

    Parameters
    ----------
    path : path
        A ``uv pip compile`` lock file; default :data:`LOCK`.

    Returns
    -------
    dict
        Normalised name → (name as written, version, names of the packages that need it);
        pyproject's own requirements are needed by ``neuroclips-pipeline``.

    Raises
    ------
    PipelineError
        If the file is unreadable, holds a line that is not a ``name==version`` pin, or
        holds no pin.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PipelineError(f"{path}: lock file unreadable ({exc.strerror})") from exc
    pins = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise PipelineError(f"{path}:{number}: not a 'name==version' pin: {line!r}")
        via = _VIA.search(line)
        parents = () if via is None else tuple(_via_names(via["via"]))
        pins[normalize(match["name"])] = (match["name"], match["version"], parents)
    if not pins:
        raise PipelineError(f"{path}: no pins")
    return pins


def _via_names(text: str) -> list[str]:
    """``a, neuroclips-pipeline (pyproject.toml)`` → ``['a', 'neuroclips-pipeline']``."""
    return [normalize(part.split()[0]) for part in text.split(",") if part.strip()]


def installed_versions(names=KEY_PACKAGES) -> dict[str, str]:
    """Installed version of each named distribution; absent ones are left out.

    Parameters
    ----------
    names : iterable of str
        Distribution names; default :data:`KEY_PACKAGES`.

    Returns
    -------
    dict of str to str
        Name as given → installed version.
    """
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def lock_drift(path: str | os.PathLike = LOCK) -> list[str]:
    """Every installed package whose version differs from the lock's, one line each (the
    lock also pins optional extras that an environment may leave out).

    Parameters
    ----------
    path : path
        The lock file; default :data:`LOCK`.

    Returns
    -------
    list of str
        ``"<name>: locked <v1>, installed <v2>"``; empty when nothing drifts.

    Raises
    ------
    PipelineError
        If the lock cannot be read (:func:`read_lock`).
    """
    lock = read_lock(path)
    installed = installed_versions([written for written, _, _ in lock.values()])
    return [
        f"{written}: locked {version}, installed {installed[written]}"
        for written, version, _ in lock.values()
        if written in installed and installed[written] != version
    ]


def versions_table(names=KEY_PACKAGES, lock: str | os.PathLike | None = LOCK) -> str:
    """Installed and locked versions of ``names``, drift marked with ``*``.

    Parameters
    ----------
    names : iterable of str
        Distribution names; default :data:`KEY_PACKAGES`.
    lock : path or None
        The lock file; ``None`` or a missing file leaves the locked column empty.

    Returns
    -------
    str
        A plain-text table, one row per package after a header and a ``python`` row.
    """
    locked = read_lock(lock) if lock is not None and Path(lock).exists() else {}
    rows = [("package", "installed", "locked" if locked else "locked (no lock file)")]
    rows.append(("python", platform.python_version(), ""))
    installed = installed_versions(names)
    for name in names:
        have = installed.get(name, "-")
        want = locked.get(normalize(name), (None, "-"))[1] if locked else ""
        mark = " *" if locked and have != want else ""
        rows.append((name, have, want + mark))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}".rstrip() for a, b, c in rows)


def _closure(roots: list[str], lock: dict) -> set[str]:
    """``roots`` and every locked package that they need, directly or not."""
    needed_by: dict[str, set[str]] = {}
    for name, (_, _, parents) in lock.items():
        for parent in parents:
            needed_by.setdefault(parent, set()).add(name)
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(needed_by.get(name, ()))
    return seen


def env_file_text(path: str | os.PathLike, lock: str | os.PathLike = LOCK) -> str:
    """The conda env file ``path`` with its ``pip:`` section pinned from the lock.

    The section's entries without ``# via`` are the environment's own packages;
    they keep their order and take the lock's versions. Below them come every
    locked package they need, sorted, each marked with what needs it. Everything
    above the section is kept as it is.

    Parameters
    ----------
    path : path
        A conda env file (``envs/*.yaml``) whose ``- pip:`` section ends the file.
    lock : path
        The lock file; default :data:`LOCK`.

    Returns
    -------
    str
        The new file text, ending in a newline.

    Raises
    ------
    PipelineError
        If the file has no ``- pip:`` section, the section does not end the file, or one
        of its own packages is not in the lock.
    """
    path = Path(path)
    pins = read_lock(lock)
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:") + 1
    except StopIteration:
        raise PipelineError(f"{path}: no '- pip:' section") from None
    roots, from_git = [], []
    for line in lines[start:]:
        if _GIT_ENTRY.match(line):  # a package from git, pinned by its commit
            from_git.append(line)
            continue
        entry = _PIP_ENTRY.match(line)
        if entry is None:
            raise PipelineError(f"{path}: the pip section must end the file: {line!r}")
        if not entry["via"]:
            roots.append(normalize(re.split(r"[=<>!~\[;]", entry["pin"], maxsplit=1)[0]))
    missing = [name for name in roots if name not in pins]
    if missing:
        raise PipelineError(f"{path}: {', '.join(missing)} not in the lock {lock}")
    indent = " " * (len(lines[start - 1]) - len(lines[start - 1].lstrip()) + 4)
    out = lines[:start]
    out += [f"{indent}- {pins[n][0]}=={pins[n][1]}" for n in roots]
    out += from_git
    needed = _closure(roots, pins)
    for name in sorted(needed - set(roots)):
        written, version, parents = pins[name]
        via = ", ".join(p for p in parents if p in needed)
        out.append(f"{indent}- {written}=={version}  # via {via}")
    return "\n".join(out) + "\n"
