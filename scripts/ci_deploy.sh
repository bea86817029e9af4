#!/usr/bin/env bash
# A CI pipeline step: publish a bundle to a fleet and deploy it in stages, with curl and a token.
#   EDGE_FLEET_API=https://fleet:8443 EDGE_FLEET_TOKEN=efk_... scripts/ci_deploy.sh BUNDLE NAME:VERSION GROUP
# The token needs the admin role (publish); EDGE_FLEET_CA=ca.crt for a self-signed server certificate.
# Exits 0 when the rollout succeeded, 1 when it halted or a request was refused (the API's message is printed).
set -euo pipefail
bundle=$1 target=$2 group=$3
api=${EDGE_FLEET_API:?set EDGE_FLEET_API} auth="Authorization: Bearer ${EDGE_FLEET_TOKEN:?set EDGE_FLEET_TOKEN}"
curl_() { curl -sS --fail-with-body ${EDGE_FLEET_CA:+--cacert "$EDGE_FLEET_CA"} -H "$auth" "$@"; }
# one field of the JSON answer; a refusal ({"error", "message", ...}) prints its message and fails
field() { python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(f\"refused: {d.get('message', d)}\") if '$1' not in d else print(d['$1'])"; }

curl_ -X POST "$api/api/v1/bundles?filename=$(basename "$bundle")" \
      -H 'Content-Type: application/octet-stream' --data-binary @"$bundle" | field sha256 >/dev/null
id=$(curl_ -X POST "$api/api/v1/rollouts" -H 'Content-Type: application/json' \
      -d "{\"bundle\": \"$target\", \"group\": \"$group\", \"stages\": \"${EDGE_FLEET_STAGES:-10,50,100}\"}" | field id)
echo "rollout $id of $target to group $group"
while :; do
  status=$(curl_ "$api/api/v1/rollouts/$id" | field status)
  case $status in
    succeeded) echo "rollout $id succeeded"; exit 0 ;;
    halted) echo "rollout $id halted: $(curl_ "$api/api/v1/rollouts/$id" | field reason)" >&2; exit 1 ;;
  esac
  sleep "${EDGE_FLEET_POLL:-5}"
done
