#!/usr/bin/env bash
# Run a command with a real local Kafka broker (KRaft, from Maven jars) around it:
# start the broker in its own state folder, export FAIRFLEET_BOOTSTRAP, run the command,
# always stop the broker. Fails if the broker cannot start (never skips Kafka tests).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE_DIR="${FAIRFLEET_BROKER_STATE:-.fairfleet/broker-$$}"
# not passed on: the command's config checks flag unknown FAIRFLEET_ variables
unset FAIRFLEET_BROKER_STATE
FF=.venv/bin/fairfleet
cleanup() { "$FF" broker stop --state-dir "$STATE_DIR" >/dev/null 2>&1 || true; rm -rf "$STATE_DIR"; }
trap cleanup EXIT INT TERM
"$FF" broker start --state-dir "$STATE_DIR"
FAIRFLEET_BOOTSTRAP="$("$FF" broker status --state-dir "$STATE_DIR" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["bootstrap"])')"
export FAIRFLEET_BOOTSTRAP
echo "FAIRFLEET_BOOTSTRAP=$FAIRFLEET_BOOTSTRAP"
"$@"
