"""Task-specific reward terms of the shipped recipes (GEO visibility gain, the refiner's verification and citations)."""
