"""rubric-rl: train rubric generators with RL, rewarded by the influence of their synthetic data."""

__version__ = "0.1.0"
