"""The HTTP machinery of the judge and the reward engines: endpoints, transport, limits, retries, breaker, clock."""
