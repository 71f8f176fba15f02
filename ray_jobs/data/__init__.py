"""Datasets: prompts for RL and evaluation, supervised and preference sequences (TRL formats)."""
