"""Jobs: what a command runs end to end (prune only; prune and recover; a study of many runs) and the
Hydra helpers that build their parts from a config.

The top layer: may import every other part of prune_recover; nothing below imports from here.
"""
