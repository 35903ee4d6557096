"""fMRI stages: preprocessing, voxel selection and the hemodynamic shift."""


rule preprocess:
    """Trim, 4th-order detrend and z-score every run of a subject (cortical vertices)."""
    input:
        runs=fmri_runs,
        stimuli=stimulus_videos,
    output:
        directory("results/{subject}/preprocessed.zarr"),
    params:
        tr_s=config["dataset"]["tr_s"],
        trailing_volumes=config["dataset"]["trailing_volumes"],
        max_leading_volumes=config["dataset"]["max_leading_volumes"],
        detrend_order=config["preprocess"]["detrend_order"],
    log:
        "logs/preprocess/{subject}.log",
    benchmark:
        "benchmarks/preprocess/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline preprocess --subject {wildcards.subject} --runs {input.runs:q}"
        " --stimuli {input.stimuli:q} --output {output:q} --tr-s {params.tr_s}"
        " --trailing-volumes {params.trailing_volumes}"
        " --max-leading-volumes {params.max_leading_volumes}"
        " --detrend-order {params.detrend_order} > {log:q} 2>&1"


rule select_voxels:
    """Reliability t-test (Fisher z, one-sample t, Bonferroni) over the training segments."""
    input:
        "results/{subject}/preprocessed.zarr",
    output:
        directory("results/{subject}/selection.zarr"),
    params:
        alpha=config["selection"]["alpha"],
        alternative=config["selection"]["alternative"],
        train_segments=DATASET.train_segments,
    log:
        "logs/select_voxels/{subject}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline select --preprocessed {input:q} --output {output:q}"
        " --train-segments {params.train_segments} --alpha {params.alpha}"
        " --alternative {params.alternative} > {log:q} 2>&1"


rule align:
    """Pair every clip with the BOLD response shift_s later (selected vertices only)."""
    input:
        preprocessed="results/{subject}/preprocessed.zarr",
        selection="results/{subject}/selection.zarr",
    output:
        directory("results/{subject}/aligned.zarr"),
    params:
        shift_s=config["alignment"]["shift_s"],
        tr_s=config["dataset"]["tr_s"],
        train_segments=DATASET.train_segments,
        test_segments=DATASET.test_segments,
    log:
        "logs/align/{subject}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline align --preprocessed {input.preprocessed:q}"
        " --selection {input.selection:q} --output {output:q}"
        " --train-segments {params.train_segments} --test-segments {params.test_segments}"
        " --shift-s {params.shift_s} --tr-s {params.tr_s} > {log:q} 2>&1"
