"""The trainable parts of NeuroClips: Perception and Semantic Reconstructors."""
