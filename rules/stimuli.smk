"""Stimulus stages: frames of every clip, shared by all subjects."""


rule extract_frames:
    """Decode one segment of its stimulus and keep frames.fps frames per second, resized."""
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
        alignment=config_values("alignment", "clip_s"),
        frames=config_values("frames", "fps", "size"),
        window=segment_window,
    shell:
        "python -m pipeline frames --video {input:q} --output {output:q} --window {params.window:q}"
        " --clip-s {params.alignment[clip_s]} --fps {params.frames[fps]} --size {params.frames[size]}"
        " --threads {threads} > {log:q} 2>&1"
