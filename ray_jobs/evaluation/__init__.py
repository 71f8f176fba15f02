"""The evaluation job's parts: running conditions, the report and its files."""
