"""Structured pruning as plain functions on `nn.Module`: score neurons and blocks, choose, refit, cut.

`importance` and `depth` score, `calibration`, `gram` and `layerwise` gather the statistics they read,
`targets` turns a ratio or parameter count into a width, `surgery` slices weights (and keeps config,
LoRA matrices and optimizer state consistent), `refit` re-solves `down_proj` (`obs` chooses with it),
`reconstruct` fits each pruned layer's weights to its output by gradient descent, `schedule` plans
events over training, and `pruner` runs one event end to end. May import the bottom layer only
(`arch`, `models`, `lm`, `logs`); never `evaluation`, `training` or `jobs`.
"""
