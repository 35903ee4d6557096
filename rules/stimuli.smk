"""Stimulus stages: frames of every clip, shared by all subjects."""


rule extract_frames:
    """Decode one stimulus once and keep frames.fps frames per second, resized."""
    input:
        stimulus_video,
    output:
        directory("results/frames/{segment}.zarr"),
    params:
        tr_s=config["dataset"]["tr_s"],
        fps=config["frames"]["fps"],
        size=config["frames"]["size"],
    log:
        "logs/extract_frames/{segment}.log",
    benchmark:
        "benchmarks/extract_frames/{segment}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline frames --video {input:q} --output {output:q} --tr-s {params.tr_s}"
        " --fps {params.fps} --size {params.size} --threads {threads} > {log:q} 2>&1"
