"""Datasets: a corpus of clips tokenized on Ray Data into Parquet shards."""
