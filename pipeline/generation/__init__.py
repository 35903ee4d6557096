"""The inference half of NeuroClips: keyframes (β), captions (γ), videos (α + β + γ), fusion."""
