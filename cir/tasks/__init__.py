"""LightningModules: thin wiring of backbones, losses and evaluators."""
