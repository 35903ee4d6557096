"""The synthetic demo dataset (only included when dataset.root is the demo root)."""


rule demo_dataset:
    """Generate stimuli, CIFTI runs and ground truth in the exact cc2017 raw layout."""
    output:
        raw=demo_files(),
        ground_truth=directory(f"{DATASET_CONFIG['root']}/ground_truth.zarr"),
    log:
        "logs/demo_dataset/demo_dataset.log",
    benchmark:
        "benchmarks/demo_dataset/demo_dataset.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: 1
    params:
        # the dataset root holds ground_truth.zarr
        root=dataset_root_of,
        settings=demo_settings_json(),
    shell:
        "python -m pipeline demo --root {params.root:q} --settings {params.settings:q} > {log:q} 2>&1"
