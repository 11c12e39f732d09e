"""The trial SDK: what training code imports to take part in an hpo-operator study.

    import hpo_trial

    params = hpo_trial.hyperparameters()          # {"learning_parameters.learning_rate": 0.01, ...}
    for epoch in range(1, (hpo_trial.max_resource() or 10) + 1):
        ...
        hpo_trial.report(epoch, val_accuracy)      # returns at once, never raises; sent in the background

Standard library only, so any training image can install it. The reference trainer
(``python -m hpo_trial.train``) needs torch and lives in its own modules, imported only when run.
"""

from hpo_trial.env import (
    checkpoint_dir,
    hyperparameters,
    max_resource,
    metric_name,
    start_resource,
    stop_resource,
    study_name,
    trial_name,
)
from hpo_trial.reporting import flush, report

__all__ = [
    "checkpoint_dir",
    "flush",
    "hyperparameters",
    "max_resource",
    "metric_name",
    "report",
    "start_resource",
    "stop_resource",
    "study_name",
    "trial_name",
]
