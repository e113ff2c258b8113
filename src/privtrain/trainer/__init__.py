"""DP-SGD training with Opacus: models, features, accounting, checkpoints."""
