#!/usr/bin/env python3
"""Translate infra/template.yaml (AWS SAM) into plain CloudFormation JSON, offline.

    .venv/bin/python infra/translate.py OUT.json [--template infra/template.yaml]
                                                 [--code-uri-prefix s3://bucket/prefix]

Why: cfn-lint (>= 1.x) no longer expands the SAM transform; it checks AWS::Serverless::* against
SAM's own schema, which misses mistakes that only show up in the generated resources (e.g. a
misspelt FunctionResponseTypes on the event source mapping). Linting the translation catches
them (infra/lint.sh). infra/local_deploy.py reuses `translate()` to deploy into moto, whose
CloudFormation does not run the SAM transform at all.

What it does to the template before translating:
  * local CodeUri paths (samtranslator rejects them) become s3://<bucket>/<prefix>/<Logical>.zip
    placeholders, one key per function so a deployer can upload a zip per function;
  * the managed-policy map samtranslator would fetch from IAM is a stub (no AWS calls); the
    template uses inline policies only, and SAM's own SQS-poller policy is referenced by ARN;
  * the region defaults to us-east-1 so the run needs no AWS configuration.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

INFRA_DIR = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = INFRA_DIR / "template.yaml"
DEFAULT_CODE_URI_PREFIX = "s3://assetsync-placeholder-artifacts/code"
SERVERLESS_TYPES_WITH_CODE = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}


class _StubManagedPolicyLoader:
    """samtranslator asks this for {policy name: ARN}; answering {} keeps translation offline."""

    def load(self) -> dict[str, str]:
        return {}


def load_template(path: Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Parse a SAM/CFN YAML template, short-form intrinsics (!Ref, !Sub, ...) included."""
    # cfn-lint ships a CloudFormation-aware YAML loader; samtranslator depends on no YAML parser.
    from cfnlint.decode.cfn_yaml import loads

    text = path.read_text(encoding="utf-8")
    return _plain(loads(text, str(path)))


def _plain(value: Any) -> Any:
    """cfn-lint's loader returns str/dict subclasses that carry line marks; make them plain."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def code_uri_placeholders(template: dict[str, Any], prefix: str = DEFAULT_CODE_URI_PREFIX) -> dict[str, str]:
    """Replace local code paths with s3:// placeholders in place; return {logical id: s3 uri}."""
    replaced: dict[str, str] = {}
    prefix = prefix.rstrip("/")
    for logical_id, resource in template.get("Resources", {}).items():
        prop = SERVERLESS_TYPES_WITH_CODE.get(resource.get("Type", ""))
        if not prop:
            continue
        props = resource.setdefault("Properties", {})
        current = props.get(prop)
        if current is None:
            current = template.get("Globals", {}).get("Function", {}).get(prop)
        if isinstance(current, str) and not current.startswith("s3://"):
            uri = f"{prefix}/{logical_id}.zip"
            props[prop] = uri
            replaced[logical_id] = uri
    return replaced


def translate(
    template: dict[str, Any] | None = None,
    *,
    template_path: Path = DEFAULT_TEMPLATE,
    code_uri_prefix: str = DEFAULT_CODE_URI_PREFIX,
    parameter_values: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (CloudFormation template, {function logical id: placeholder s3 uri})."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from samtranslator.translator.transform import transform

    sam = copy.deepcopy(template) if template is not None else load_template(template_path)
    code_uris = code_uri_placeholders(sam, code_uri_prefix)
    # samtranslator fills pseudo parameters (AWS::Region, ...) from a boto session when given one;
    # without one it uses placeholders that CloudFormation resolves at deploy time.
    cfn = transform(sam, dict(parameter_values or {}), _StubManagedPolicyLoader())
    return cfn, code_uris


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the CloudFormation JSON ('-' for stdout)")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--code-uri-prefix", default=DEFAULT_CODE_URI_PREFIX)
    args = parser.parse_args(argv)

    try:
        cfn, _ = translate(template_path=args.template, code_uri_prefix=args.code_uri_prefix)
    except Exception as exc:  # samtranslator raises InvalidDocumentException with per-resource causes
        causes = getattr(exc, "causes", None)
        print(f"translate: {args.template}: {exc}", file=sys.stderr)
        for cause in causes or []:
            print(f"  - {getattr(cause, 'message', cause)}", file=sys.stderr)
        return 1

    text = json.dumps(cfn, indent=2, sort_keys=False) + "\n"
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"translate: wrote {args.out} ({len(cfn.get('Resources', {}))} resources)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
