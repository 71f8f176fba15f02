"""Development stand-in servers (OpenAI-compatible): the judge, the GEO engine, the refiner's verifier."""
