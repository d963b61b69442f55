#!/usr/bin/env bash
# Offline checks of the SAM template, both must be clean (no errors, no warnings):
#   1. cfn-lint on infra/template.yaml (SAM schema + Globals merge; does not expand the transform)
#   2. samtranslator translation (infra/translate.py) + cfn-lint on the generated CloudFormation,
#      which catches mistakes in what SAM generates (event source mappings, roles, schedules).
#   3. `sam validate --lint` (SAM CLI, .venv-sam)
#   4. checkov on the SAM template and on its translation (.venv-lint): any finding fails unless
#      the template fixes it or skips it in the resource's Metadata with a comment saying why.
# Rules ignored on purpose are listed in IGNORE below, each with its reason.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ ! -x .venv/bin/cfn-lint || ! -x .venv/bin/python || ! -x .venv-lint/bin/checkov || ! -x .venv-sam/bin/sam ]]; then
  echo "lint: .venv missing; running scripts/bootstrap.sh"
  bash scripts/bootstrap.sh
fi

export AWS_DEFAULT_REGION=us-east-1
export AWS_REGION=us-east-1

# Ignored rules, applied to both passes (none so far; add as: "--ignore-checks" "RULE"  # reason).
IGNORE=()

out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT

echo "lint: cfn-lint infra/template.yaml"
.venv/bin/cfn-lint --regions us-east-1 "${IGNORE[@]}" -- infra/template.yaml

echo "lint: translating SAM -> CloudFormation"
.venv/bin/python infra/translate.py "$out_dir/template.cfn.json"

echo "lint: cfn-lint on the translated template"
.venv/bin/cfn-lint --regions us-east-1 "${IGNORE[@]}" -- "$out_dir/template.cfn.json"

echo "lint: schedule inputs vs events/ and declared secrets"
.venv/bin/python - "$out_dir/template.cfn.json" <<'PY'
import json, sys
from pathlib import Path

cfn = json.load(open(sys.argv[1]))
resources = cfn["Resources"]
secret_names = {r["Properties"].get("Name") for r in resources.values() if r["Type"] == "AWS::SecretsManager::Secret"}
events = {}
for path in sorted(Path("events").glob("*.json")):
    try:
        events[path.name] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        sys.exit(f"lint: {path}: not JSON: {exc}")
problems = []
for logical, r in resources.items():
    if r["Type"] != "AWS::Scheduler::Schedule":
        continue
    raw = r["Properties"]["Target"].get("Input")
    try:
        event = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        problems.append(f"{logical}: Input is not a JSON document: {exc}")
        continue
    for key in ("connection", "source", "secret_id"):
        if not event.get(key):
            problems.append(f"{logical}: Input lacks {key!r}")
    if event.get("secret_id") not in secret_names:
        problems.append(f"{logical}: secret_id {event.get('secret_id')!r} is not a secret this template declares")
    if not any(doc == event for doc in events.values()):
        problems.append(f"{logical}: no events/*.json holds its Input exactly ({raw})")
if problems:
    sys.exit("lint: " + "\nlint: ".join(problems))
PY

echo "lint: sam validate --lint"
SAM_CLI_TELEMETRY=0 .venv-sam/bin/sam validate --lint --region us-east-1 -t infra/template.yaml

echo "lint: every checkov skip in the template says why"
.venv/bin/python - <<'PY'
import sys
sys.path.insert(0, "infra")
from translate import load_template

problems = []
for logical, r in load_template().get("Resources", {}).items():
    for skip in ((r.get("Metadata") or {}).get("checkov") or {}).get("skip", []):
        if not str(skip.get("id", "")).startswith("CKV") or len(str(skip.get("comment", "")).strip()) < 20:
            problems.append(f"{logical}: checkov skip {skip!r} needs an id and a comment giving the reason")
if problems:
    sys.exit("lint: " + "\nlint: ".join(problems))
PY

# --skip-download: offline (no guideline download from the vendor's API).
checkov() {
  .venv-lint/bin/checkov --framework cloudformation --quiet --compact --skip-download --output cli -f "$1"
}
echo "lint: checkov on infra/template.yaml"
checkov infra/template.yaml
echo "lint: checkov on the translated template"
checkov "$out_dir/template.cfn.json"

echo "lint: ok (template and its translation are clean; checkov: no unsuppressed finding)"
