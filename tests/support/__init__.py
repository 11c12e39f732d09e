"""Helpers the tests and the benchmarks share: builders of API objects, study runners, the operator as
a process, the chart. Nothing here is a test; no module here imports a test module."""
