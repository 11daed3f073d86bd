"""Lightning glue: the recovery LightningModule, the pruning callback, the data module, guards, progress
logging and multi-process helpers.

May import `prune_recover.pruning`, `prune_recover.evaluation`, `prune_recover.data` and the bottom
layer; never `prune_recover.jobs`.
"""
