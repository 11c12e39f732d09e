"""The CRDs: generated from the models, checked in twice (crds/ and the chart), structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo_operator.kube.crd import rendered, stale_files, study_crd, trial_crd

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/hpo-operator/crds"])
def test_checked_in_crds_match_the_models(directory: str) -> None:
    stale = stale_files(REPO / directory)
    assert not stale, f"{stale}: run `hpo crds crds charts/hpo-operator/crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    out = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        out += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("crd", [study_crd(), trial_crd()], ids=["study", "trial"])
def test_schemas_are_structural_and_need_no_cel(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        free = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or free, f"{path}: no type"
        for banned in ("$ref", "anyOf", "oneOf", "const", "title", "default", "x-kubernetes-validations"):
            assert banned not in node, f"{path}: {banned}"
    assert version["subresources"] == {"status": {}}
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"


def test_study_schema_types_what_kubectl_apply_must_reject() -> None:
    spec = study_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert props["maximumResource"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "nullable": True,
    }
    assert props["mode"]["enum"] == ["max", "min"]
    assert props["parallelTrials"]["x-kubernetes-int-or-string"] is True
    assert props["hpSpace"]["additionalProperties"]["properties"]["paramType"]["enum"][0] == "uniform"
    assert set(spec["required"]) == {"hpSpace", "trialTemplate"}


def test_names_columns_and_short_names() -> None:
    study, trial = study_crd(), trial_crd()
    assert study["spec"]["names"]["shortNames"] == ["hpo"]
    assert trial["spec"]["names"]["shortNames"] == ["hpot"]
    columns = [c["name"] for c in study["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Trials", "Best", "Metric"] and columns[-1] == "Age"
    columns = [c["name"] for c in trial["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Study", "Phase", "Resource", "Value"]


def test_trial_reports_schema_accepts_the_sdk_report() -> None:
    status = trial_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    report = status["properties"]["reports"]["items"]
    assert set(report["properties"]) == {"seq", "resource", "value", "time", "extra"}
    assert report["properties"]["extra"]["x-kubernetes-preserve-unknown-fields"] is True


def test_rendered_files_are_yaml_of_the_crds() -> None:
    files = rendered()
    assert set(files) == {"hpostudies.hpo.dev.yaml", "hpotrials.hpo.dev.yaml"}
    assert yaml.safe_load(files["hpostudies.hpo.dev.yaml"]) == study_crd()
