"""fMRI stages: preprocessing, voxel selection and the hemodynamic shift."""


rule preprocess:
    """Trim, 4th-order detrend and z-score every run of a subject (cortical vertices)."""
    input:
        runs=fmri_runs,
        stimuli=stimulus_videos,
    output:
        directory("results/{subject}/preprocessed.zarr"),
    log:
        "logs/preprocess/{subject}.log",
    benchmark:
        "benchmarks/preprocess/{subject}.tsv"
    # the fMRI stages first: they take seconds and both reconstructors wait for them, but a
    # job of two threads would otherwise wait behind the one-thread model stages until
    # both cores are free at once (minutes into the tiny demo on 2 cores)
    priority: 10
    conda:
        "../envs/pipeline.yaml"
    threads: 2
    params:
        dataset=config_values(
            "dataset", "tr_s", "trailing_volumes", "max_leading_volumes"
        ),
        alignment=config_values("alignment", "clip_s"),
        preprocess=config_values(
            "preprocess", "detrend_order", "max_dropped_fraction", "accept_tr_mismatch"
        ),
        plan=subject_plan,
    shell:
        "python -m pipeline preprocess --subject {wildcards.subject} --plan {params.plan:q}"
        " --output {output:q} --tr-s {params.dataset[tr_s]} --clip-s {params.alignment[clip_s]}"
        " --trailing-volumes {params.dataset[trailing_volumes]}"
        " --max-leading-volumes {params.dataset[max_leading_volumes]}"
        " --detrend-order {params.preprocess[detrend_order]}"
        " --max-dropped-fraction {params.preprocess[max_dropped_fraction]}"
        " --accept-tr-mismatch {params.preprocess[accept_tr_mismatch]} --threads {threads}"
        " > {log:q} 2>&1"


rule select_voxels:
    """Choose the vertices by selection.method, from the training segments only."""
    input:
        unpack(selection_inputs),
    output:
        directory("results/{subject}/selection.zarr"),
    log:
        "logs/select_voxels/{subject}.log",
    priority: 10
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    params:
        selection=selection_settings(),
        train_segments=DATASET.train_segments,
        extra=selection_arguments,
    shell:
        "python -m pipeline select --preprocessed {input.preprocessed:q} --output {output:q}"
        " --train-segments {params.train_segments} --settings {params.selection:q}"
        " {params.extra} > {log:q} 2>&1"


rule align:
    """Pair every clip with the BOLD response shift_s later (selected vertices only)."""
    input:
        preprocessed="results/{subject}/preprocessed.zarr",
        selection="results/{subject}/selection.zarr",
    output:
        directory("results/{subject}/aligned.zarr"),
    log:
        "logs/align/{subject}.log",
    priority: 10
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    params:
        alignment=config_values("alignment", "shift_s", "clip_s", "combine"),
        dataset=config_values("dataset", "tr_s"),
        train_segments=DATASET.train_segments,
        test_segments=DATASET.test_segments,
    shell:
        "python -m pipeline align --preprocessed {input.preprocessed:q}"
        " --selection {input.selection:q} --output {output:q}"
        " --train-segments {params.train_segments} --test-segments {params.test_segments}"
        " --shift-s {params.alignment[shift_s]} --tr-s {params.dataset[tr_s]}"
        " --clip-s {params.alignment[clip_s]} --combine {params.alignment[combine]} > {log:q} 2>&1"
