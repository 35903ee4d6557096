"""NeuroClips as a reproducible pipeline: raw cc2017 files → aligned fMRI, clip frames,
feature caches, trained reconstructors, keyframes, the reconstructed videos and their
multi-fMRI fusion.

Wiring only: configuration, validation, rule modules and the default target.
All logic lives in the ``pipeline`` package.
"""

import os
import sys
import time

from snakemake.utils import min_version

min_version("9.0")

# Rules call `python -m pipeline`: the package must import here and in every job.
sys.path.insert(0, workflow.basedir)

from pipeline.config import uses_demo, validate_config
from pipeline.workflow import (
    check_writable,
    export_rule_params,
    mark_failed_outputs,
    prepare_job_environment,
)

RUN_START = time.time()

prepare_job_environment(workflow.basedir)


configfile: os.path.join(workflow.basedir, "config.yaml")


validate_config(config)


report: "report/workflow.rst"


# before the first job (not for dry runs): a read-only or protected output folder
onstart:
    check_writable(["results", "logs", "benchmarks"])


# after a failed job: make Snakemake's record of its missing outputs say so, so that the
# next run remakes them and everything downstream (pipeline.workflow.mark_failed_outputs)
onerror:
    mark_failed_outputs(workflow, RUN_START)


include: "rules/common.smk"


if uses_demo(config):

    include: "rules/demo.smk"


include: "rules/fmri.smk"
include: "rules/stimuli.smk"
include: "rules/models.smk"
include: "rules/caches.smk"
include: "rules/reconstructors.smk"
include: "rules/generation.smk"
include: "rules/fusion.smk"
include: "rules/evaluation.smk"
include: "rules/interpretation.smk"


# every rule's params into the jobs' environment: a stage checks its input stores against them
export_rule_params(workflow)


# Everything: aligned fMRI of every subject, frames of every stimulus, the feature caches,
# the blurry videos and CLIP embeddings of every subject's test clips, and the final
# videos (results/{subject}/videos, the main target), their multi-fMRI fusion, and the
# evaluation tables and HTML report (results/report/index.html).
rule all:
    default_target: True
    input:
        aligned_stores,
        frame_stores,
        cache_stores,
        blurry_stores,
        embedding_stores,
        video_dirs,
        fused_dirs,
        interpretation_dirs,
        "results/report/index.html",
