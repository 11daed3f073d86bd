"""prune_recover: structured width/depth pruning of Hugging Face causal LMs and quality recovery."""

__version__ = "0.1.0"
