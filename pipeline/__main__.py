"""``python -m pipeline``: the command line of the pipeline's stages."""

from pipeline.cli import main

raise SystemExit(main())
