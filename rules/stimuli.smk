"""Stimulus stages: frames of every clip, shared by all subjects."""


rule extract_frames:
    """Decode one stimulus once and keep frames.fps frames per second, resized."""
    input:
        stimulus_video,
    output:
        directory("results/frames/{segment}.zarr"),
    log:
        "logs/extract_frames/{segment}.log",
    benchmark:
        "benchmarks/extract_frames/{segment}.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    params:
        dataset=config_values("dataset", "tr_s"),
        frames=config_values("frames", "fps", "size"),
    shell:
        "python -m pipeline frames --video {input:q} --output {output:q}"
        " --tr-s {params.dataset[tr_s]} --fps {params.frames[fps]} --size {params.frames[size]}"
        " --threads {threads} > {log:q} 2>&1"
