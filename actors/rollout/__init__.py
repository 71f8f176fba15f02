"""Rollout generation: the rollout worker and its generation backends (HF ``generate``, vLLM)."""
