"""Any Source -> a verified TFRecord dataset folder.

index (Items -> Index) -> plan (pure: split, folds, fraction, shards) -> shards
(prepare, frame, hash, write one shard) -> writer (the local run, manifest);
outdir keeps the output folder's resume state; verify re-reads a dataset;
neardup finds near-identical images; cli runs generate_dataset.py's commands.
"""
