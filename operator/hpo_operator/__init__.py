"""hpo-operator: hyper-parameter optimisation with ASHA under a time budget."""

__version__ = "0.1.0"
