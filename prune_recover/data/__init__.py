"""Corpora as token streams, without Lightning: where text comes from, how it becomes ids and blocks.

`sources` resolves a split to local files or a hub dataset and loads its rows with `datasets`;
`tokens` tokenizes rows with `Dataset.map` (cached by the dataset fingerprint) and cuts windows;
`packing` groups token rows into fixed-length training blocks. Evaluation and the training data
module build on these. May import the bottom layer (`prune_recover.files`, `.logs`) only.
"""
