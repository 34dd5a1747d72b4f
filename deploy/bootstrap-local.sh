#!/usr/bin/env bash
# The whole federation on ONE machine, on 127.0.0.1, with the real CLI: a coordinator (SuperLink with
# TLS, site authentication and a database), three hospital sites with phantom seizure videos, and one
# federated run. Everything it starts is stopped when it exits, also on an error or Ctrl-C.
#
#   deploy/bootstrap-local.sh [WORKDIR]          WORKDIR defaults to ./semiofed-local
#
#   SEMIOFED  the semiofed command (default: `semiofed` on PATH, else this repository's .venv)
#   PORT      the SuperLink's HTTPS port (default 9092); the SuperNodes' local ports are PORT+11..13
#   ROUNDS    federated rounds (default 2)
#
# It needs the model files (`semiofed models verify` must pass; README, "Model files") and takes
# roughly 15-30 minutes on 2 CPU cores, most of it `site prepare` of 30 short videos. Run again with
# the same WORKDIR, it reuses what is there (`site prepare` skips finished records) and adds a run;
# each run spends privacy budget, which `site budget` shows at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n "${SEMIOFED:-}" ]]; then
  semiofed=$SEMIOFED
elif command -v semiofed >/dev/null 2>&1; then
  semiofed=semiofed
else
  semiofed="$here/../.venv/bin/semiofed"
fi
port=${PORT:-9092}
rounds=${ROUNDS:-2}
work=${1:-semiofed-local}
mkdir -p "$work"
work=$(cd "$work" && pwd)
coordinator="$work/coordinator"
videos="$work/videos"
sites=(site-a site-b site-c)
# --run-epsilon: each site spends at most this much of its budget (epsilon 8 by default) in one run.
run_epsilon=2

say() { printf '\n== %s\n' "$*" >&2; }

# Stop only what this script started: a SuperLink or SuperNode already running is left alone.
coordinator_started=0
joined=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  say "stopping what this script started"
  for site in ${joined[@]+"${joined[@]}"}; do  # (the +-form: an empty array under set -u)
    "$semiofed" site leave --site-dir "$work/sites/$site" || status=1
  done
  if [[ $coordinator_started == 1 ]]; then
    "$semiofed" coordinator stop --dir "$coordinator" || status=1
  fi
  exit "$status"
}
trap cleanup EXIT
# An explicit exit on a signal makes bash run the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

say "checking the model files ($semiofed models verify)"
if ! "$semiofed" models verify >/dev/null; then
  echo "the model files are missing or do not verify: run \`semiofed models fetch\` (or \`--from MIRROR_DIR\`)," \
       "or point SEMIOFED_MODEL_DIR at a folder that has them" >&2
  exit 1
fi

if [[ ! -f "$videos/phantom.json" ]]; then
  say "rendering phantom seizure videos for 3 hospitals into $videos"
  # 30 patients, one seizure each: every site gets at least 5 patients, one per fold of the run's 5-fold split.
  "$semiofed" phantom generate --out "$videos" --sites 3 --patients 30 --seizures-per-patient 1 \
    --duration-s 15-20 --seed 0
fi

if [[ ! -f "$coordinator/coordinator.json" ]]; then
  say "creating the coordinator in $coordinator (CA and SuperLink certificate for 127.0.0.1 and localhost)"
  "$semiofed" coordinator init --dir "$coordinator" --port "$port" --host 127.0.0.1
fi

for i in "${!sites[@]}"; do
  site=${sites[$i]}
  dir="$work/sites/$site"
  manifest="$videos/site_0$((i + 1))/manifest.csv"
  if [[ ! -f "$dir/site.json" ]]; then
    say "site $site: site init"
    "$semiofed" site init --site-dir "$dir" --site-id "$site"
  fi
  # What a hospital sends to the coordinator: its public key, under its site id.
  say "site $site: enrolling keys/site_key.pub at the coordinator"
  "$semiofed" coordinator enroll "$dir/keys/site_key.pub" --dir "$coordinator" --name "$site"
  say "site $site: site prepare (MediaPipe and I3D on every video of $manifest)"
  "$semiofed" site prepare --site-dir "$dir" --manifest "$manifest"
done

say "starting the SuperLink on 127.0.0.1:$port"
"$semiofed" coordinator start --dir "$coordinator" --port "$port"
coordinator_started=1

for i in "${!sites[@]}"; do
  site=${sites[$i]}
  dir="$work/sites/$site"
  say "site $site: joining with the coordinator's ca.pem"
  "$semiofed" site join --site-dir "$dir" --superlink "127.0.0.1:$port" --ca "$coordinator/tls/ca.pem" \
    --clientapp-port $((port + 11 + i)) --run-epsilon "$run_epsilon" --background
  joined+=("$site")
done

# A SuperNode the SuperLink rejects (not enrolled, wrong certificate, port taken) exits within seconds.
sleep 5
for site in "${joined[@]}"; do
  dir="$work/sites/$site"
  if ! kill -0 "$(cat "$dir/supernode.pid")" 2>/dev/null; then
    echo "the SuperNode of $site stopped; the end of $dir/logs/supernode.log:" >&2
    tail -n 20 "$dir/logs/supernode.log" >&2
    exit 1
  fi
done

say "federated run: $rounds rounds over ${#sites[@]} sites"
"$semiofed" coordinator run --dir "$coordinator" --rounds "$rounds"

for site in "${sites[@]}"; do
  dir="$work/sites/$site"
  say "site $site: privacy budget and ledger audit"
  "$semiofed" site budget --site-dir "$dir"
  "$semiofed" audit verify --ledger "$dir/ledger.jsonl" --site-key "$dir/keys/site_key.pub"
done

say "done: global model and run.json under $coordinator/checkpoints"
