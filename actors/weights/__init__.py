"""Weight sync between the learner and the rollout engines: export (full or LoRA adapter) and the process-group broadcast."""
