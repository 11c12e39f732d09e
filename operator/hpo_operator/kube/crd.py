"""The CRDs, generated from the pydantic models into structural apiextensions.k8s.io/v1 schemas.

A structural schema gives every node a type, so the API server rejects a wrong type at
``kubectl apply`` and prunes unknown fields. JSON Schema constructs that OpenAPI v3.0 lacks are
translated: ``$ref`` inlined, ``X | None`` as ``nullable``, ``int | 'auto'`` as int-or-string,
``Any`` and free-form mappings as preserved unknown fields. No CEL: it does not exist in 1.20.

``python -m hpo_operator.kube.crd DIR...`` writes the files into each DIR; ``--check`` only
compares, for CI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ..config import StudySpec
from .policy import RULES
from .resources import (
    GROUP,
    STUDY_KIND,
    STUDY_PLURAL,
    TRIAL_KIND,
    TRIAL_PLURAL,
    VERSION,
    StudyStatus,
    TrialSpec,
    TrialStatusModel,
)

Schema = dict[str, Any]
PRESERVE = "x-kubernetes-preserve-unknown-fields"
_KEPT = ("enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "minProperties", "format")


def structural(schema: Schema, defs: Schema) -> Schema:
    """One JSON Schema node of pydantic's output as a structural OpenAPI v3.0 node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return structural({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs)
    description = schema.get("description")
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        if len(options) == 1:
            out = structural(options[0], defs)
        elif {o.get("type") for o in options} == {"integer", "string"}:
            out = {"x-kubernetes-int-or-string": True}
        else:
            out = {PRESERVE: True}
        if nullable:
            out["nullable"] = True
    else:
        out = _typed(schema, defs)
    if description:
        out = {"description": " ".join(description.replace("``", "`").split()), **out}
    return out


def _typed(schema: Schema, defs: Schema) -> Schema:
    kind = schema.get("type")
    if kind is None:  # Any: the API server keeps whatever is there
        return {PRESERVE: True}
    out: Schema = {"type": kind}
    if "const" in schema:
        out["enum"] = [schema["const"]]
    out |= {k: schema[k] for k in _KEPT if k in schema}
    if "exclusiveMinimum" in schema:  # JSON Schema 2020's number form -> OpenAPI 3.0's flag
        out |= {"minimum": schema["exclusiveMinimum"], "exclusiveMinimum": True}
    if kind == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    if kind == "object":
        properties = schema.get("properties", {})
        if properties:
            out["properties"] = {name: structural(p, defs) for name, p in properties.items()}
        if schema.get("required"):
            out["required"] = list(schema["required"])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        elif extra is True or (extra is None and not properties):
            out[PRESERVE] = True
    return out


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True)
    return structural(raw, raw.get("$defs", {}))


def _column(name: str, kind: str, path: str, description: str, priority: int = 0) -> Schema:
    column = {"name": name, "type": kind, "jsonPath": path, "description": description}
    return column | ({"priority": priority} if priority else {})


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation")


def _crd(kind: str, plural: str, short: str, spec: Schema, status: Schema, columns: list[Schema]) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def study_crd() -> Schema:
    columns = [
        _column("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed"),
        _column("Trials", "string", ".status.progress", "Finished/planned trials"),
        _column("Best", "number", ".status.best.value", "The best value so far"),
        _column("Metric", "string", ".spec.metric", "The metric optimised"),
        _column(
            "Used",
            "number",
            ".status.budget.usedSeconds",
            "Seconds of the budget used (at most 30 s old while running)",
            1,
        ),
        _AGE,
    ]
    spec = model_schema(StudySpec)
    template = spec["properties"]["trialTemplate"]
    # The operator refuses these (policy.py); the schema cannot, since an admin may allow them.
    rules = "; ".join(RULES)
    template["description"] = (
        f"{template.get('description', '')} Unless the operator's trialPolicy allows: {rules}."
    )
    return _crd(STUDY_KIND, STUDY_PLURAL, "hpo", spec, model_schema(StudyStatus), columns)


def trial_crd() -> Schema:
    columns = [
        _column("Study", "string", ".spec.study", "The study the trial belongs to"),
        _column(
            "Phase", "string", ".status.phase", "Pending, Running, Paused, Completed, Pruned, Failed, Stopped"
        ),
        _column("Resource", "number", ".status.resource", "The highest resource (epochs) reported"),
        _column("Value", "number", ".status.lastValue", "The last value reported"),
        _column("Rung", "integer", ".status.rung", "The rung a pruned trial stopped at", 1),
        _AGE,
    ]
    return _crd(
        TRIAL_KIND, TRIAL_PLURAL, "hpot", model_schema(TrialSpec), model_schema(TrialStatusModel), columns
    )


HEADER = "# Generated by `python -m hpo_operator.kube.crd` from hpo_operator's models; do not edit.\n"


def rendered() -> dict[str, str]:
    """File name -> YAML text of each CRD."""
    return {
        f"{crd['metadata']['name']}.yaml": HEADER + yaml.safe_dump(crd, sort_keys=False, width=110)
        for crd in (study_crd(), trial_crd())
    }


def stale_files(directory: Path) -> list[Path]:
    """The CRD files in ``directory`` that are missing or differ from the models."""
    return [
        directory / name
        for name, text in rendered().items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered().items():
        (directory / name).write_text(text)
        paths.append(directory / name)
    return paths


def main(argv: list[str]) -> int:
    check = "--check" in argv
    directories = [Path(a) for a in argv if a != "--check"] or [Path("crds")]
    if check:
        stale = [p for d in directories for p in stale_files(d)]
        for path in stale:
            print(
                f"{path}: out of date; run python -m hpo_operator.kube.crd {' '.join(map(str, directories))}"
            )
        return 1 if stale else 0
    for directory in directories:
        for path in write(directory):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
