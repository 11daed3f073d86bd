"""Measuring a model: the perplexity protocol, lm-eval tasks, deployment speed, and the run report.

Nothing here trains or prunes. May import `prune_recover.data` and the bottom layer (`arch`,
`models`, `lm`, `files`, `logs`); never `pruning`, `training` or `jobs`.
"""
