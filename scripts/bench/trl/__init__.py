"""The TRL side of scripts/bench/vs_trl.py: its GRPOTrainer runner, and the report's pure parts."""
