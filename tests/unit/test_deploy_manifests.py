"""deploy/ validated offline: every overlay rendered with kubectl's kustomize (the release the
tests build) and each object checked against Kubernetes v1.34's own OpenAPI schemas, which the
k8s.io/kubernetes Go module carries (api/openapi-spec/v3). Unknown fields are errors, as with
server-side field validation. Custom resources (the sample NodeConfig) are checked against the
CRD that deploy/base installs. The same manifests are applied to a real API server in
tests/e2e/test_e2e_real.py.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBECTL = REPO / ".venv" / "kubernetes" / "bin" / "kubectl"
GO_MOD = REPO / "tools" / "kubernetes" / "go.mod"
OVERLAYS = ("base", "non-default", "replace-kube-proxy", "restore-kube-proxy", "samples")
# Partial objects that server-side apply merges into kubeadm's kube-proxy DaemonSet: checked
# for types and unknown fields, not for the fields only a whole object has.
APPLY_PATCHES = {("DaemonSet", "kube-system", "kube-proxy")}


def spec_directory() -> Path:
    version = next(
        line.split()[-1]
        for line in GO_MOD.read_text().splitlines()
        if "k8s.io/kubernetes v" in line
    )
    return REPO / ".venv" / "go" / "mod" / f"k8s.io/kubernetes@{version}" / "api/openapi-spec/v3"


def render(overlay: str) -> list[dict[str, Any]]:
    if not KUBECTL.is_file():
        pytest.skip(f"{KUBECTL} is missing: run `make kubernetes`")
    text = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def strict(schema: Any, *, partial: bool) -> Any:
    """The schema with unknown properties refused (where Kubernetes does not keep them), and
    without ``required`` for a partial object."""
    if isinstance(schema, list):
        return [strict(item, partial=partial) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value, partial=partial) for key, value in schema.items()}
    if partial:
        result.pop("required", None)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@functools.cache
def openapi(api_version: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    name = f"apis__{group}__{version}_openapi.json" if group else f"api__{version}_openapi.json"
    path = spec_directory() / name
    if not path.is_file():
        pytest.skip(f"{path} is missing: run `make kubernetes`")
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@functools.cache
def validator(api_version: str, kind: str, partial: bool) -> jsonschema.Validator:
    spec = openapi(api_version)
    group, _, version = api_version.rpartition("/")
    schemas = spec["components"]["schemas"]
    (name,) = (
        name
        for name, schema in schemas.items()
        if {"group": group, "version": version, "kind": kind}
        in schema.get("x-kubernetes-group-version-kind", [])
    )
    root = {
        "$ref": f"#/components/schemas/{name}",
        "components": strict(spec["components"], partial=partial),
    }
    return jsonschema.Draft202012Validator(root)


def custom_resource_validator(documents: list[dict[str, Any]], kind: str) -> jsonschema.Validator:
    (crd,) = (
        d
        for d in documents
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == kind
    )
    (version,) = crd["spec"]["versions"]
    schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]), partial=False)
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft202012Validator(schema)


def problems(document: dict[str, Any], crds: list[dict[str, Any]]) -> list[str]:
    metadata = document["metadata"]
    key = (document["kind"], metadata.get("namespace"), metadata["name"])
    if document["apiVersion"].startswith("wao.bitmedia.co.jp/"):
        check = custom_resource_validator(crds, document["kind"])
    else:
        check = validator(document["apiVersion"], document["kind"], key in APPLY_PATCHES)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in check.iter_errors(document)
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_offline(overlay: str) -> None:
    crds = render("base")
    for document in render(overlay):
        found = problems(document, crds)
        assert not found, f"{overlay}: {document['kind']} {document['metadata']['name']}: {found}"


def test_validation_catches_a_misspelt_field() -> None:
    crds = render("base")
    (daemonset,) = (d for d in render("non-default") if d["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["comand"] = ["waolb"]
    assert any("comand" in problem for problem in problems(daemonset, crds))
    (sample,) = (d for d in render("samples") if d["kind"] == "NodeConfig")
    del sample["spec"]["nodeName"]
    assert any("nodeName" in problem for problem in problems(sample, crds))


def test_the_daemonsets_and_rbac_say_what_the_guide_says() -> None:
    documents = render("non-default")
    (daemonset,) = (d for d in documents if d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "waolb"
    assert pod["hostNetwork"] is True
    bindings = {d["roleRef"]["name"] for d in documents if d["kind"].endswith("RoleBinding")}
    assert bindings == {"system:node-proxier", "waolb-wao-reader", "waolb-secret-reader"}
