#!/usr/bin/env bash
# The project's test command (README): everything CI runs, in order, failing on the first error.
#   1. scripts/bootstrap.sh            project-local .venv (moto, cfn-lint, samtranslator, cargo-lambda),
#                                      .venv-lint (checkov), .venv-sam (aws-sam-cli)
#   2. cargo fmt --all -- --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. infra/lint.sh                   cfn-lint on the SAM template and its translation, sam validate
#                                      --lint, checkov on both (tools in .venv-lint, .venv-sam)
#   5. cargo test --workspace          unit tests + end-to-end tests (these start moto themselves)
# Extra arguments are passed to `cargo test` (e.g. scripts/test.sh -- --nocapture).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "bootstrap (.venv)"
bash scripts/bootstrap.sh

# cargo-lambda, moto_server and cfn-lint come from the project's venv.
export PATH="$ROOT/.venv/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The tests talk to moto on loopback only; never let a stray profile or IMDS lookup leak out.
export AWS_EC2_METADATA_DISABLED=true

if command -v rustup >/dev/null 2>&1; then
  installed_components="$(rustup component list --installed 2>/dev/null || true)"
else
  installed_components="rustfmt clippy (no rustup: assume the toolchain has them)"
fi
for component in rustfmt clippy; do
  if ! grep -q "$component" <<<"$installed_components"; then
    step "rustup component add $component"
    rustup component add "$component"
  fi
done

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "infra/lint.sh"
bash infra/lint.sh

step "cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"

step "all checks passed in $((SECONDS - started))s"
