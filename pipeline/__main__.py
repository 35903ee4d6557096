"""``python -m pipeline``: the command line of the pipeline's stages."""

from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
