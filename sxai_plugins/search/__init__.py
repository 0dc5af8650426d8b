"""Semantic sample search: a query language over semantic probabilities and the SQLite index it runs on."""
