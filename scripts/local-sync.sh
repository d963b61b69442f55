#!/usr/bin/env bash
# The main job, locally, on a fresh machine (needs only Rust and Python 3):
#   1. scripts/bootstrap.sh                     project-local .venv (moto, boto3, ...)
#   2. cargo build (debug) of `assetsync` and `simulators`
#   3. assetsync local up                       a fresh moto on loopback with infra/template.yaml deployed
#   4. simulators                               the five vendors over one seeded fleet of $FLEET devices
#   5. assetsync secrets put                    one secret per source, pointing at its simulator
#   6. assetsync sync, in order (in-process)   people first (JumpCloud, Intune users) so devices get
#                                               assigned, then devices: Intune, Endpoint Central, Jamf
#                                               computers, Jamf mobile devices, Kandji, JumpCloud systems
#   7. one summary table of the runs            (assetsync runs list)
# The simulators and moto are stopped at the end, however the script ends. Exit status: non-zero if
# any run failed (or any step did).
#
# Environment:
#   FLEET=2000        devices per vendor (Jamf also gets FLEET/4 mobile devices); people = FLEET
#   SEED=42           the fleet's seed
#   EC_RATE_LIMIT=6000  Endpoint Central simulator's per-API limit per minute. The documented 120/min
#                     (which the connector honours by default) makes a first sync of 2000 computers'
#                     detail summaries take ~18 minutes; here the simulator plays a server with a
#                     higher limit and the ec-prod event raises the connector's `config:detail_rate`
#                     to match. EC_RATE_LIMIT=120 EC_DETAIL_RATE=110 reproduces the documented server.
#   EC_DETAIL_RATE=5000 the ec-prod event's `config:detail_rate`
#   CARGO_PROFILE=debug  `release` builds optimised binaries (slower to build on 2 cores; see README)
#   LOCAL_DIR=.local  where the stack file, moto's state, the simulators' secrets file, the events
#                     and each run's JSON summary go
#
# The events used are written to .local/events/ (generated; edit them there to experiment, e.g.
# `assetsync local up`, start the simulators, then `assetsync sync --event .local/events/jamf-prod.json`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

FLEET="${FLEET:-2000}"
SEED="${SEED:-42}"
EC_RATE_LIMIT="${EC_RATE_LIMIT:-6000}"
EC_DETAIL_RATE="${EC_DETAIL_RATE:-5000}"
CARGO_PROFILE="${CARGO_PROFILE:-debug}"
started=$SECONDS
step() { printf '\n==> %s\n' "$*" >&2; }

step "bootstrap (.venv)"
bash scripts/bootstrap.sh
export AWS_EC2_METADATA_DISABLED=true
# The simulators speak plain http on loopback (the CLI allows it for a local stack too).
export ASSETSYNC_ALLOW_LOOPBACK_HTTP=1
# The local stack is moto's: never let this script's commands reach a real AWS account.
unset AWS_ENDPOINT_URL TABLE_NAME RECORDS_QUEUE_URL FETCH_QUEUE_URL DLQ_URL FETCHER_FUNCTION AWS_PROFILE || true

step "cargo build ($CARGO_PROFILE): assetsync, simulators"
profile_flag=()
profile_dir=debug
if [[ "$CARGO_PROFILE" == "release" ]]; then profile_flag=(--release); profile_dir=release; fi
cargo build ${profile_flag[@]+"${profile_flag[@]}"} -p assetsync-cli -p assetsync-tests --bin assetsync --bin simulators
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${target_dir:-${CARGO_TARGET_DIR:-$ROOT/target}}/$profile_dir"
SIMULATORS="$BIN/simulators"

STATE="${LOCAL_DIR:-$ROOT/.local}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
# Every assetsync command uses this run's stack file (moto's state lives next to it).
assetsync() { "$BIN/assetsync" --stack-file "$STATE/stack.json" "$@"; }
EVENTS="$STATE/events"
mkdir -p "$EVENTS" "$STATE/runs"
SIMS_JSON="$STATE/simulators.json"
sim_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$sim_pid" ]] && kill -0 "$sim_pid" 2>/dev/null; then
    kill -TERM "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
  fi
  assetsync local down >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "assetsync local up (a fresh moto)"
# A moto left by an earlier `local up` holds an older register; start from an empty one.
assetsync local down >/dev/null 2>&1 || true
assetsync local up

step "simulators: fleet $FLEET, seed $SEED"
rm -f "$SIMS_JSON"
"$SIMULATORS" --fleet "$FLEET" --seed "$SEED" --out "$SIMS_JSON" --ec-rate-limit "$EC_RATE_LIMIT" \
  --exit-with-pid $$ </dev/null 2>"$STATE/simulators.log" &
sim_pid=$!
for _ in $(seq 1 600); do
  [[ -s "$SIMS_JSON" ]] && break
  if ! kill -0 "$sim_pid" 2>/dev/null; then
    echo "local-sync: the simulators exited:" >&2
    cat "$STATE/simulators.log" >&2
    exit 1
  fi
  sleep 0.1
done
[[ -s "$SIMS_JSON" ]] || { echo "local-sync: the simulators did not start within 60 s" >&2; exit 1; }
cat "$STATE/simulators.log" >&2

step "secrets (one per source, pointing at its simulator)"
assetsync secrets put assetsync/jumpcloud --file "$SIMS_JSON" --pointer /jumpcloud/secret
assetsync secrets put assetsync/intune --file "$SIMS_JSON" --pointer /intune/secret
assetsync secrets put assetsync/ec-prod --file "$SIMS_JSON" --pointer /endpoint-central/secret
assetsync secrets put assetsync/jamf-prod --file "$SIMS_JSON" --pointer /jamf/secret
assetsync secrets put assetsync/kandji --file "$SIMS_JSON" --pointer /kandji/secret

# event NAME SOURCE SECRET TYPE [MAPPING]: write .local/events/NAME.json (MAPPING in JSON string form).
event() {
  local name=$1 source=$2 secret=$3 type=$4 mapping=${5:-}
  {
    printf '{\n  "connection": "%s",\n  "source": "%s",\n  "secret_id": "%s",\n' "$name" "$source" "$secret"
    printf '  "object_type": "%s",\n  "mode": "create-update",\n' "$type"
    if [[ -n "$mapping" ]]; then printf '  "mapping": "%s",\n' "$mapping"; fi
    printf '  "action": "sync"\n}\n'
  } >"$EVENTS/$name.json"
  echo "$name"
}
# People first: a device is assigned to the active person with its user's email.
CONNECTIONS=(
  "$(event jumpcloud-people jumpcloud assetsync/jumpcloud Person)"
  "$(event intune-users intune assetsync/intune Person 'config:api=users')"
  "$(event intune-prod intune assetsync/intune Hardware)"
  "$(event ec-prod endpoint-central assetsync/ec-prod Hardware "config:detail_rate=$EC_DETAIL_RATE\\nconfig:detail_concurrency=8")"
  "$(event jamf-prod jamf assetsync/jamf-prod Hardware)"
  "$(event jamf-mobile jamf assetsync/jamf-prod Hardware 'config:api=mobile-devices')"
  "$(event kandji-prod kandji assetsync/kandji Hardware)"
  "$(event jumpcloud-systems jumpcloud assetsync/jumpcloud Hardware)"
)

since="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
failed=()
for name in "${CONNECTIONS[@]}"; do
  step "sync $name"
  t0=$SECONDS
  set +e
  assetsync --json sync --event "$EVENTS/$name.json" >"$STATE/runs/$name.json"
  rc=$?
  set -e
  case $rc in
    0) echo "    done in $((SECONDS - t0)) s" >&2 ;;
    2) echo "    the run FAILED ($((SECONDS - t0)) s): see $STATE/runs/$name.json" >&2; failed+=("$name") ;;
    *) echo "    sync exited $rc" >&2; failed+=("$name") ;;
  esac
done

step "summary: $FLEET devices per vendor, $((SECONDS - started)) s in all"
assetsync runs list --since "$since" --oldest-first --limit 100
if ((${#failed[@]})); then
  echo "local-sync: failed: ${failed[*]}" >&2
  exit 1
fi
