"""Outputs of a run: Parquet tables (schemas, atomic shards), the summary, the offline HTML report, RunResult."""
