"""File input and output shared by the stages: videos and GIFs."""

from pipeline.io.video import VIDEO_SUFFIXES, read_video

__all__ = ["VIDEO_SUFFIXES", "read_video"]
