"""The RL job's parts: pure pipeline logic, the set of actor handles, weight publishing, run settings, evaluation while training."""
