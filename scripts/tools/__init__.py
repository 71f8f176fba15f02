"""Development tools: the import-layer check, the config reference and default config writers."""
