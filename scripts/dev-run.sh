#!/usr/bin/env bash
# `make run`: warnd on its embedded defaults, with what a newcomer needs to see a warning go out
# and come back confirmed: a local broker (if none listens on 1883) and simulated speakers for
# the example villages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIG=${WARND_CONFIG:-config/warnd.toml}
mkdir -p var
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  broker=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  # As docs/deploy.md sets up a real broker: sessions and queued messages survive its restart.
  # `user`: started as root, mosquitto would become `mosquitto` and could not write var/.
  printf '%s\n' 'listener 1883 127.0.0.1' 'allow_anonymous true' "user $(id -un)" 'persistence true' \
    "persistence_location $PWD/var/" 'autosave_interval 60' 'max_queued_messages 100000' \
    'max_inflight_messages 1000' > var/mosquitto.conf
  "$broker" -c var/mosquitto.conf >var/mosquitto.log 2>&1 &
  pids+=($!)
  echo "make run: started a local mosquitto on 127.0.0.1:1883 (log: var/mosquitto.log)"
fi

if "$PY" -m warnd.tools.simulator --help >/dev/null 2>&1; then
  villages=$("$PY" - "$CONFIG" <<'PYEOF'
import sys
from warnd.config import load_settings
from warnd.directory import Directory
from pathlib import Path
s = load_settings(Path(sys.argv[1]))
print(" ".join(Directory.load(s.directory.path).villages))
PYEOF
)
  # shellcheck disable=SC2086
  "$PY" -m warnd.tools.simulator --broker mqtt://127.0.0.1:1883 --village $villages >var/simulator.log 2>&1 &
  pids+=($!)
  echo "make run: simulated speakers for villages: $villages (log: var/simulator.log)"
fi

echo "make run: warnd on http://127.0.0.1:8080 — try:"
echo "  the console: http://127.0.0.1:8080/ (sign in with demo-operator-token; sign off with demo-approver-token)"
echo "  WARND_TOKEN=demo-operator-token .venv/bin/warnctl issue --event 暴雨 --level red --headline 暴雨红色预警 --instruction 立即转移 --code 330502101201"
echo "  WARND_TOKEN=demo-approver-token .venv/bin/warnctl approve W…   (审核签发: the draft waits until then)"
"$PY" -m warnd.cli run --config "$CONFIG"
