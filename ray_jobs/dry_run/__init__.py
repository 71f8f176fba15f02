"""The dry-run plan: input checks, simulated placement and per-GPU memory, without loading weights."""
