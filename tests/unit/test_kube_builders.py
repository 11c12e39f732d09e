"""Builders of HPOTrials, trial Jobs and the trials' API access; GPU capacity from Nodes and Pods."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hpo_operator.kube.builders import (
    active_deadline_seconds,
    build_job,
    build_trial,
    build_trial_identity,
)
from hpo_operator.kube.capacity import gpu_capacity, pod_gpus, quantity

JSON = dict[str, Any]


def study(**spec: Any) -> JSON:
    return {
        "apiVersion": "hpo.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "mnist", "namespace": "team", "uid": "study-uid"},
        "spec": {
            "metric": "accuracy",
            "maximumResource": 30,
            "hpSpace": {"lr": {"paramType": "uniform", "range": [0.1, 1]}},
            "trialTemplate": {
                "metadata": {"labels": {"team": "vision"}},
                "spec": {
                    "containers": [
                        {"name": "train", "image": "trainer:1", "env": [{"name": "A", "value": "1"}]}
                    ]
                },
            },
            **spec,
        },
    }


def trial_with_uid(s: JSON, index: int = 3) -> JSON:
    trial = build_trial(s, index, {"lr": 0.5})
    trial["metadata"]["uid"] = "trial-uid"
    return trial


def env_of(job: JSON) -> dict[str, str]:
    return {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_trial_is_named_by_index_labelled_and_owned_by_its_study() -> None:
    trial = build_trial(study(), 3, {"lr": 0.5})
    meta = trial["metadata"]
    assert meta["name"] == "mnist-3" and meta["namespace"] == "team"
    assert meta["labels"] == {"hpo.dev/study": "mnist", "hpo.dev/trial": "mnist-3"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "hpo.dev/v1alpha1",
            "kind": "HPOStudy",
            "name": "mnist",
            "uid": "study-uid",
            "controller": True,
        }
    ]
    assert trial["spec"] == {"study": "mnist", "index": 3, "hyperparameters": {"lr": 0.5}}


def test_job_carries_the_trial_contract_environment() -> None:
    s = study()
    job = build_job(s, trial_with_uid(s), deadline=None, now=0)
    env = env_of(job)
    assert env["A"] == "1"  # the template's own variables stay
    assert env["HPO_STUDY"] == "mnist" and env["HPO_TRIAL"] == "mnist-3" and env["HPO_NAMESPACE"] == "team"
    assert json.loads(env["HPO_HYPERPARAMETERS"]) == {"lr": 0.5}
    assert env["HPO_METRIC"] == "accuracy" and env["HPO_MAX_RESOURCE"] == "30"
    assert env["HPO_CHECKPOINT_DIR"].endswith("/team/mnist-study-uid/mnist-3")


def test_once_the_plan_is_known_trials_learn_the_rung_levels_their_reports_are_urgent_at() -> None:
    s = study()
    assert "HPO_RUNG_LEVELS" not in env_of(build_job(s, trial_with_uid(s), None, 0))
    s["status"] = {"plan": {"rungs": [1, 3, 9.5]}}
    assert env_of(build_job(s, trial_with_uid(s), None, 0))["HPO_RUNG_LEVELS"] == "1,3,9.5"


def test_a_study_with_a_goal_tells_its_trials_so_that_the_report_reaching_it_is_sent_at_once() -> None:
    plain = env_of(build_job(study(), trial_with_uid(study()), None, 0))
    assert not {"HPO_GOAL", "HPO_GOAL_RESOURCE", "HPO_MODE"} & set(plain)
    s = study(goal=0.25, mode="min")
    env = env_of(build_job(s, trial_with_uid(s), None, 0))
    assert (env["HPO_GOAL"], env["HPO_GOAL_RESOURCE"], env["HPO_MODE"]) == ("0.25", "30", "min")
    s = study(goal=0.9, goalResource=10)
    env = env_of(build_job(s, trial_with_uid(s), None, 0))
    assert (env["HPO_GOAL"], env["HPO_GOAL_RESOURCE"], env["HPO_MODE"]) == ("0.9", "10", "max")


def test_template_may_not_override_the_trial_identity_but_may_move_checkpoints() -> None:
    s = study()
    s["spec"]["trialTemplate"]["spec"]["containers"][0]["env"] = [
        {"name": "HPO_TRIAL", "value": "forged"},
        {"name": "HPO_CHECKPOINT_DIR", "value": "/mnt/ckpt"},
    ]
    env = env_of(build_job(s, trial_with_uid(s), None, 0))
    assert env["HPO_TRIAL"] == "mnist-3"
    assert env["HPO_CHECKPOINT_DIR"] == "/mnt/ckpt"


def test_job_never_retries_is_owned_by_its_trial_and_labelled() -> None:
    s = study()
    job = build_job(s, trial_with_uid(s), None, 0)
    assert job["apiVersion"] == "batch/v1" and job["metadata"]["name"] == "mnist-3"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["ownerReferences"][0]["uid"] == "trial-uid"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"] == {
        "team": "vision",
        "hpo.dev/study": "mnist",
        "hpo.dev/trial": "mnist-3",
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "mnist-3"
    assert "activeDeadlineSeconds" not in job["spec"]


def test_the_pod_runs_as_the_account_the_template_names_or_else_as_the_trial_itself() -> None:
    s = study()
    s["spec"]["trialTemplate"]["spec"]["serviceAccount"] = "admin"
    pod = build_job(s, trial_with_uid(s), None, 0)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "admin" and "serviceAccount" not in pod  # the policy decides
    del s["spec"]["trialTemplate"]["spec"]["serviceAccount"]
    pod = build_job(s, trial_with_uid(s), None, 0)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mnist-3" and "serviceAccount" not in pod


def test_job_of_a_trial_not_created_yet_has_no_owner_reference() -> None:
    s = study()
    job = build_job(s, build_trial(s, 0, {}), None, 0)
    assert "ownerReferences" not in job["metadata"]


@pytest.mark.parametrize(
    ("gpus", "resources", "expected"),
    [
        (1, None, {"limits": {"nvidia.com/gpu": "1"}}),
        (2, {"limits": {"cpu": "2"}}, {"limits": {"cpu": "2", "nvidia.com/gpu": "2"}}),
        (1, {"limits": {"nvidia.com/gpu": "4"}}, {"limits": {"nvidia.com/gpu": "4"}}),  # the template's own
        (0, None, None),
    ],
)
def test_gpu_limit_is_added_when_the_template_sets_none(
    gpus: int, resources: JSON | None, expected: JSON | None
) -> None:
    s = study(gpusPerTrial=gpus)
    if resources is not None:
        s["spec"]["trialTemplate"]["spec"]["containers"][0]["resources"] = resources
    container = build_job(s, trial_with_uid(s), None, 0)["spec"]["template"]["spec"]["containers"][0]
    assert container.get("resources") == expected


def test_build_job_leaves_the_study_untouched() -> None:
    s = study()
    before = json.dumps(s, sort_keys=True)
    build_job(s, trial_with_uid(s), 100.0, 0)
    assert json.dumps(s, sort_keys=True) == before


@pytest.mark.parametrize(
    ("deadline", "now", "seconds"), [(None, 5, None), (100.9, 0, 100), (10, 9.5, 1), (10, 20, 1)]
)
def test_active_deadline_never_outlives_the_budget(
    deadline: float | None, now: float, seconds: int | None
) -> None:
    assert active_deadline_seconds(deadline, now) == seconds


def test_a_trials_identity_may_only_get_and_patch_its_own_status() -> None:
    role, binding, account = build_trial_identity(trial_with_uid(study()))
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "mnist-3"
    assert role["rules"] == [
        {
            "apiGroups": ["hpo.dev"],
            "resources": ["hpotrials/status"],
            "resourceNames": ["mnist-3"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"]["name"] == "mnist-3"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mnist-3", "namespace": "team"}]
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "trial-uid" for o in (account, role, binding))


# --- capacity -------------------------------------------------------------------------------------


def node(name: str, gpus: int, ready: bool = True, unschedulable: bool = False) -> JSON:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "8"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(gpus: int, node_name: str | None = "a", phase: str = "Running", init: int = 0) -> JSON:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    spec: JSON = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    if node_name:
        spec["nodeName"] = node_name
    if init:
        spec["initContainers"] = [{"name": "i", "resources": {"requests": {"nvidia.com/gpu": str(init)}}}]
    return {"metadata": {"name": "p"}, "spec": spec, "status": {"phase": phase}}


def test_free_gpus_are_allocatable_on_ready_schedulable_nodes_minus_live_requests() -> None:
    nodes = [
        node("a", 2),
        node("b", 2),
        node("down", 2, ready=False),
        node("cordoned", 2, unschedulable=True),
    ]
    pods = [
        pod(1, "a"),
        pod(1, None, "Pending"),  # not bound yet: it will take a GPU first
        pod(1, "b", "Succeeded"),  # finished pods hold nothing
        pod(1, "down"),  # on a node that is not counted
        pod(0, "b"),
    ]
    capacity = gpu_capacity(nodes, pods)
    assert (capacity.total, capacity.used, capacity.free) == (4, 2, 2)


def test_free_never_goes_below_zero() -> None:
    assert gpu_capacity([node("a", 1)], [pod(1), pod(1)]).free == 0


def test_pod_request_counts_the_larger_of_containers_and_init_containers() -> None:
    assert pod_gpus(pod(1, init=2)) == 2
    assert pod_gpus(pod(2, init=1)) == 2


@pytest.mark.parametrize(("text", "value"), [("2", 2), (2, 2), ("2000m", 2), ("0", 0)])
def test_quantities(text: str | int, value: int) -> None:
    assert quantity(text) == value


# --- hyper-parameters in the command line, and the metrics collector -------------------------------


def _containers(s: JSON, params: JSON) -> list[JSON]:
    trial = build_trial(s, 3, params)
    trial["metadata"]["uid"] = "trial-uid"
    containers: list[JSON] = build_job(s, trial, None, 0)["spec"]["template"]["spec"]["containers"]
    return containers


def _template(*containers: JSON) -> JSON:
    return {"spec": {"containers": list(containers)}}


def test_each_containers_command_and_args_get_the_trials_values() -> None:
    from tests.cluster.kubelet import expand

    s = study(
        hpSpace={
            "lr": {"paramType": "uniform", "range": [0.1, 1]},
            "opt": {"paramType": "choice", "range": ["a"]},
        },
        trialTemplate=_template(
            {"name": "train", "image": "i", "command": ["python", "train.py", "--lr", "${lr}"],
             "args": ["--opt=${opt}", "--dir", "$(HPO_CHECKPOINT_DIR)", "$${HOME}"]},
            {"name": "side", "image": "j", "args": ["--note", "lr ${lr}"]},
        ),
    )  # fmt: skip
    train, side = _containers(s, {"lr": 0.3, "opt": "x$(HOME)"})
    assert train["command"] == ["python", "train.py", "--lr", "0.3"]
    # A value's $ is doubled, so that Kubernetes' own $(VAR) expansion gives the value back.
    assert train["args"] == ["--opt=x$$(HOME)", "--dir", "$(HPO_CHECKPOINT_DIR)", "${HOME}"]
    env = {"HOME": "/root", "HPO_CHECKPOINT_DIR": "/ck"}
    assert [expand(a, env) for a in train["args"]] == ["--opt=x$(HOME)", "--dir", "/ck", "${HOME}"]
    assert side["args"] == ["--note", "lr 0.3"]


def test_the_collector_wraps_the_first_containers_command_and_args() -> None:
    from tests.cluster.kubelet import expand

    collector = {
        "kind": "file",
        "path": "$(HPO_CHECKPOINT_DIR)/logs/*/metrics.csv",
        "resourceOffset": 1,
        "resourceKey": "epoch",
    }
    s = study(
        metricsCollector=collector,
        trialTemplate=_template(
            {"name": "train", "image": "i", "command": ["python", "train.py"], "args": ["--lr", "${lr}"]},
            {"name": "side", "image": "j", "command": ["sleep", "1"]},
        ),
    )
    train, side = _containers(s, {"lr": 0.5})
    assert "args" not in train
    assert train["command"] == [
        "python3", "-m", "hpo_trial.collect", "--kind", "file",
        "--path", "$$(HPO_CHECKPOINT_DIR)/logs/*/metrics.csv", "--resource-key", "epoch",
        "--resource-offset", "1.0", "--termination-log", "/dev/termination-log",
        "--", "python", "train.py", "--lr", "0.5",
    ]  # fmt: skip
    assert side["command"] == ["sleep", "1"]
    # The collector sees its path as written and expands it in the trial's environment itself.
    argv = [expand(a, {"HPO_CHECKPOINT_DIR": "/ck"}) for a in train["command"]]
    assert argv[6] == "$(HPO_CHECKPOINT_DIR)/logs/*/metrics.csv"

    pattern = r"Epoch (?P<epoch>\d+).*acc (?P<accuracy>[\d.]+)$"
    s = study(
        metricsCollector={"kind": "stdout", "pattern": pattern},
        trialTemplate=_template(
            {"name": "t", "image": "i", "command": ["otx", "train"], "terminationMessagePath": "/tmp/why"}
        ),
    )
    (train,) = _containers(s, {"lr": 0.5})
    argv = [expand(a, {}) for a in train["command"]]
    assert argv == [
        "python3", "-m", "hpo_trial.collect", "--kind", "stdout", "--pattern", pattern,
        "--termination-log", "/tmp/why", "--", "otx", "train",
    ]  # fmt: skip
