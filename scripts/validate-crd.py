#!/usr/bin/env python3
"""Validate custom resources (FlinkDeployment, ...) against the openAPIV3Schema of vendored CRDs.

kubernetes-validate only knows built-in kinds, so custom resources rendered by the chart or shipped as examples
are checked here against the CRDs in tests/k8s/crds/ (the Flink operator's FlinkDeployment CRD is the authority
for what a FlinkDeployment may contain).

Strict like `kubectl apply --validate=strict`: an object schema that lists properties rejects unknown fields
unless it is marked x-kubernetes-preserve-unknown-fields. metadata is checked the way the API server checks
ObjectMeta basics (name present and a DNS subdomain, label/annotation values are strings).

Usage:
  validate-crd.py [--crd-dir DIR] [--ignore-unknown] FILE|- ...

Prints one line per custom resource; exits 1 if any resource is invalid (or, without --ignore-unknown, if a
document has a kind with no vendored CRD), 2 on usage errors. Needs PyYAML and jsonschema (pinned by
scripts/check-chart.sh).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import re
import sys

import jsonschema
import yaml

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def to_json_schema(node, strict: bool):
    """Turn a (structural) OpenAPI v3 CRD schema into a JSON schema that jsonschema's Draft 4 validator reads."""
    if isinstance(node, list):
        return [to_json_schema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v, strict) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    is_object = node.get("type") == "object" and "properties" in node
    if strict and is_object and "additionalProperties" not in node and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def load_crds(crd_dir: pathlib.Path, strict: bool):
    """Map (apiVersion, kind) -> (crd name, JSON schema) for every served version of every CRD in crd_dir."""
    schemas = {}
    files = sorted(p for p in crd_dir.iterdir() if p.suffix in (".yaml", ".yml"))
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata are implicit at the root of every custom resource.
                props = schema.setdefault("properties", {})
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
                props.setdefault("metadata", {"type": "object"})
                api_version = f"{spec['group']}/{version['name']}"
                schemas[(api_version, spec["names"]["kind"])] = (
                    doc["metadata"]["name"],
                    to_json_schema(schema, strict),
                )
    return schemas


def check_metadata(meta) -> list[str]:
    errors = []
    if not isinstance(meta, dict):
        return ["metadata: must be an object"]
    name = meta.get("name")
    if not name:
        errors.append("metadata.name: required")
    elif not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS subdomain")
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict):
            errors.append(f"metadata.{field}: must be a map")
            continue
        for key, value in values.items():
            if not isinstance(value, str):
                errors.append(f"metadata.{field}[{key}]: value {value!r} must be a string (quote it)")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not DNS_SUBDOMAIN.match(ns) or len(ns) > 63):
        errors.append(f"metadata.namespace: {ns!r} is not a DNS label")
    return errors


def describe(doc) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "<no name>")
    return f"{doc.get('kind')}/{ns + '/' if ns else ''}{name}"


def main(argv=None) -> int:
    default_crds = pathlib.Path(__file__).resolve().parent.parent / "tests" / "k8s" / "crds"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="YAML files with one or more documents; - for stdin")
    parser.add_argument("--crd-dir", type=pathlib.Path, default=default_crds)
    parser.add_argument(
        "--ignore-unknown", action="store_true", help="skip documents whose kind has no vendored CRD"
    )
    parser.add_argument(
        "--no-strict", action="store_true", help="allow fields the schema does not list (API server pruning)"
    )
    args = parser.parse_args(argv)

    if not args.crd_dir.is_dir():
        print(f"error: CRD directory {args.crd_dir} not found", file=sys.stderr)
        return 2
    schemas = load_crds(args.crd_dir, strict=not args.no_strict)
    if not schemas:
        print(f"error: no CustomResourceDefinition in {args.crd_dir}", file=sys.stderr)
        return 2

    failed = 0
    checked = 0
    for name in args.files:
        label = "<stdin>" if name == "-" else name
        text = sys.stdin.read() if name == "-" else pathlib.Path(name).read_text()
        try:
            docs = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as err:
            print(f"FAIL {label}: YAML error: {err}")
            failed += 1
            continue
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in schemas:
                if args.ignore_unknown:
                    continue
                print(f"FAIL {label} {describe(doc)}: no vendored CRD for {key[0]} {key[1]}")
                failed += 1
                continue
            crd_name, schema = schemas[key]
            validator = jsonschema.Draft4Validator(schema)
            errors = check_metadata(doc.get("metadata"))
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                path = ".".join(str(p) for p in err.absolute_path) or "<root>"
                errors.append(f"{path}: {err.message}")
            checked += 1
            if errors:
                failed += 1
                print(f"FAIL {label} {describe(doc)} against {crd_name}:")
                for line in errors:
                    print(f"    {line}")
            else:
                print(f"ok   {label} {describe(doc)} against {crd_name}")
    if checked == 0 and not args.ignore_unknown:
        print("FAIL no custom resource found")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
