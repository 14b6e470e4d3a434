"""The RefTok model, its reference-free twin, checkpoints and training."""
