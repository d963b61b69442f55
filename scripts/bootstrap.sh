#!/usr/bin/env bash
# Creates the project-local Python virtual environment (.venv at the repo root)
# with the tools the local stack, the template checks and the Lambda builds need:
#   moto[server]        AWS emulator (DynamoDB, SQS, Secrets Manager, Scheduler, CFN, S3, Lambda control plane)
#   cfn-lint            CloudFormation/SAM linter            (infra/lint.sh)
#   aws-sam-translator  SAM -> CloudFormation translation     (infra/translate.py)
#   boto3               AWS SDK for Python                    (infra/local_deploy.py)
#   cargo-lambda        builds the Lambda bundles             (sam build / cargo lambda build)
#   ziglang             cross-linker cargo-lambda uses for arm64
# and two tool venvs beside it, because their pins conflict with moto/boto3's and each other's:
#   .venv-lint: checkov          security scan of the template and its translation (infra/lint.sh)
#   .venv-sam:  aws-sam-cli      `sam validate --lint` (infra/lint.sh), `sam build`/`sam deploy`
#
# Idempotent: a stamp inside .venv records the pins it was built from; when the
# stamp matches, the script does nothing. Works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.assetsync-bootstrap"

# Pinned versions (checked with `pip index versions` on PyPI). Bump deliberately.
PINS=(
  "moto[server]==5.2.5"
  "cfn-lint==1.58.0"
  "aws-sam-translator==1.115.0"
  "boto3==1.44.5"
  "cargo-lambda==1.9.2"
  "ziglang==0.15.2"
)

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "bootstrap: no python3 found on PATH (need Python >= 3.9)" >&2
  exit 1
fi

# The stamp names the venv's location too: venv scripts carry absolute paths, so a moved or
# copied checkout must rebuild its .venv.
want="$VENV python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ${PINS[*]}"
imports_ok() {
  "$VENV/bin/python" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("moto", "cfnlint", "samtranslator", "boto3")))' >/dev/null 2>&1
}
stamp_ok=false
if [[ -f "$STAMP" && -x "$VENV/bin/python" && "$(cat "$STAMP")" == "$want" ]]; then stamp_ok=true; fi
# Tool venvs: name, pins, entry point. Each has its own stamp, like .venv.
LINT_PINS=("checkov==3.3.30")
SAM_PINS=("aws-sam-cli==1.170.0")
tool_venv() {
  local dir="$1" tool="$2"; shift 2
  local stamp="$dir/.assetsync-bootstrap"
  local want_tool
  want_tool="$dir python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') $*"
  if [[ -f "$stamp" && -x "$dir/bin/$tool" && "$(cat "$stamp")" == "$want_tool" ]]; then
    return 0
  fi
  echo "bootstrap: creating $dir with $*"
  "$PYTHON" -m venv --clear "$dir"
  "$dir/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
  "$dir/bin/python" -m pip install --disable-pip-version-check --quiet "$@"
  if [[ ! -x "$dir/bin/$tool" ]]; then
    echo "bootstrap: expected $dir/bin/$tool after install, not found" >&2
    exit 1
  fi
  printf '%s' "$want_tool" >"$stamp"
}
tool_venvs() {
  tool_venv "$ROOT/.venv-lint" checkov "${LINT_PINS[@]}"
  tool_venv "$ROOT/.venv-sam" sam "${SAM_PINS[@]}"
}

if $stamp_ok && imports_ok; then
  tool_venvs
  echo "bootstrap: .venv is up to date ($VENV)"
  exit 0
fi

clear=()
if [[ -d "$VENV" ]]; then
  if $stamp_ok; then
    reason="packages missing although the stamp says installed"
  elif [[ ! -f "$STAMP" ]]; then
    reason="no stamp (an interrupted first run?)"
  elif [[ "$(head -c ${#VENV} "$STAMP")" != "$VENV" ]]; then
    reason="built for another location"
  elif ! "$VENV/bin/python" -c '' 2>/dev/null; then
    reason="its python does not run"
  else
    reason=""  # only the pins or the python minor changed: upgrade in place
  fi
  if [[ -n "$reason" ]]; then
    echo "bootstrap: rebuilding $VENV: $reason"
    clear=(--clear)
  fi
fi
if [[ ! -x "$VENV/bin/python" || ${#clear[@]} -gt 0 ]]; then
  echo "bootstrap: creating virtual environment $VENV with $("$PYTHON" --version 2>&1)"
  if ! "$PYTHON" -m venv "${clear[@]}" "$VENV"; then
    echo "bootstrap: 'python -m venv' failed; on Debian/Ubuntu install python3-venv" >&2
    exit 1
  fi
fi

echo "bootstrap: installing ${PINS[*]}"
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "${PINS[@]}"

# Smoke-check the entry points the other scripts rely on.
for tool in moto_server cfn-lint cargo-lambda; do
  if [[ ! -x "$VENV/bin/$tool" ]]; then
    echo "bootstrap: expected $VENV/bin/$tool after install, not found" >&2
    exit 1
  fi
done
"$VENV/bin/python" -c 'import samtranslator, boto3, moto' >/dev/null

printf '%s' "$want" >"$STAMP"
tool_venvs
echo "bootstrap: done; tools in $VENV/bin ($("$VENV/bin/cargo-lambda" lambda --version 2>/dev/null || echo cargo-lambda), $("$VENV/bin/cfn-lint" --version 2>/dev/null))"
