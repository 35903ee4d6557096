"""Building the DAG imports no model library.

Every Snakemake process parses the Snakefile and builds the DAG: a dry run, a run that
finds nothing to do, and on a cluster each job's own Snakemake start. Torch alone
costs that parse seconds and hundreds of MB, so the Snakefile, the rules and the
``pipeline`` modules they import at parse time leave the model libraries to the jobs
(``pipeline.models`` loads its loaders lazily; ``pipeline.models.presets`` is plain data).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

#: Model libraries (top-level import names) that only a job may import.
FORBIDDEN = (
    "accelerate",
    "cv2",
    "diffusers",
    "huggingface_hub",
    "matplotlib",
    "open_clip",
    "peft",
    "safetensors",
    "skimage",
    "sklearn",
    "timm",
    "torch",
    "torchvision",
    "transformers",
)

#: Runs Snakemake's command line in this interpreter, then writes the names of every
#: imported module to the JSON file named by the first argument.
PROBE = """
import json, sys
from snakemake.cli import main
out, sys.argv = sys.argv[1], ["snakemake", *sys.argv[2:]]
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code
with open(out, "w") as f:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, f)
"""


def dag_imports(snakefile: Path, workdir: Path) -> tuple[list[str], str]:
    """The forbidden modules imported by ``snakemake -n`` of ``snakefile``'s default
    target in ``workdir``, and Snakemake's output."""
    out = workdir / "modules.json"
    args = ["-s", str(snakefile), "-d", str(workdir), "--cores", "1", "-n"]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0 and out.exists(), log
    probe = json.loads(out.read_text())
    assert probe["exit"] == 0, log
    imported = sorted({m.split(".")[0] for m in probe["modules"]} & set(FORBIDDEN))
    return imported, log


def test_dry_run_of_the_workflow_imports_no_model_library(tmp_path):
    # the default config (the embedded demo) on an empty folder: the whole DAG is planned,
    # so every input function and params function runs
    imported, log = dag_imports(REPO / "Snakefile", tmp_path)
    assert "This was a dry-run" in log and "synthesize_videos" in log, log
    assert imported == []


def test_the_probe_sees_a_model_library_imported_through_the_package(tmp_path):
    # control: a Snakefile that imports a loader at parse time, through the same lazy
    # package the rules use, is caught
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from pipeline.models import load_clip\n"
        "\n"
        "rule all:\n"
        "    output:\n"
        "        'done.txt',\n"
        "    shell:\n"
        "        'touch {output}'\n"
    )
    imported, log = dag_imports(snakefile, tmp_path)
    assert "torch" in imported, log
