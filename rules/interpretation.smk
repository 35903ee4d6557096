"""Where in the brain: the reconstructors' voxel importance on the fs_LR 32k cortex."""


rule interpret:
    """Each reconstructor's voxel importance (the first ridge layer's mean absolute weight,
    paper §7; gradient x input) on the subject's grayordinates: flat maps, a CIFTI dense
    scalar file and an ROI table per MMP area."""
    input:
        perception="results/{subject}/perception/model",
        semantic="results/{subject}/semantic/model",
        aligned="results/{subject}/aligned.zarr",
        selection="results/{subject}/selection.zarr",
        run=first_fmri_run,
    output:
        directory("results/{subject}/interpretation"),
    log:
        "logs/interpret/{subject}.log",
    benchmark:
        "benchmarks/interpret/{subject}.tsv"
    conda:
        "../envs/models.yaml"
    threads: MODEL_THREADS
    resources:
        device=MODEL_DEVICE,
        gpu=1,
    params:
        interpretation=config_values(
            "interpretation",
            "methods",
            "colour_range",
            "border_areas",
            "permutations",
            "seed",
        ),
    shell:
        "python -m pipeline interpret --perception {input.perception:q}"
        " --semantic {input.semantic:q} --aligned {input.aligned:q}"
        " --selection {input.selection:q} --run {input.run:q} --output {output:q}"
        " --methods {params.interpretation[methods]}"
        " --colour-range {params.interpretation[colour_range]}"
        " --border-areas {params.interpretation[border_areas]}"
        " --permutations {params.interpretation[permutations]}"
        " --seed {params.interpretation[seed]} --device {resources.device} > {log:q} 2>&1"
