"""The policy model: loading (the built-in tiny model included), model files, log-probs without full-vocabulary logits."""
