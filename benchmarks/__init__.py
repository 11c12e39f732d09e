"""Reproducible benchmarks of hpo-operator against its peers (scripts; not imported by the product)."""
