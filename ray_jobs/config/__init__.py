"""Every job's config: the experiment (RL), offline and evaluation configs, loading and overrides, paths."""
