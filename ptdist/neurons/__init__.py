"""Activated FFN neurons: capture to Parquet, transferability indicators, correlation with
transfer."""
