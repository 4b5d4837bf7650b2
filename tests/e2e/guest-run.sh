#!/bin/bash
# Runs inside the guest (started by holdfast-e2e.service from the read-only
# share): waits for the boot to finish, then runs scenarios/*.sh in name
# order, each in its own bash, and leaves one result line per check in
# $E2E_OUT/results. Exits non-zero when a check failed.
set -uo pipefail

suite=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export E2E_SUITE=$suite
export E2E_IN=${E2E_IN:-/mnt/e2e/in}
export E2E_OUT=${E2E_OUT:-/mnt/e2e/out}
export E2E_FILES=$E2E_IN/files
export E2E_RESULTS=$E2E_OUT/results
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# No request may hang the suite: curl gives up after 60 s wherever a
# scenario calls it (a scenario's own -m, when given, is shorter).
export CURL_HOME=/run/holdfast-e2e-curl
mkdir -p "$CURL_HOME"
printf 'max-time = 60\nconnect-timeout = 10\n' >"$CURL_HOME/.curlrc"

# Settings from the host (HOLDFAST_E2E_ONLY, HOLDFAST_E2E_SCENARIO_TIMEOUT).
only=
scenario_timeout=300
# shellcheck source=/dev/null
. "$E2E_IN/config"

: >"$E2E_RESULTS"
cut -d' ' -f1 /proc/uptime >"$E2E_OUT/started"

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$suite/lib.sh"

# The binary under test, where units and scenarios expect it.
install -m 0755 "$E2E_IN/bin/holdfast" /usr/local/bin/holdfast

# Wait until the boot transaction is done (our own unit is Type=exec, so it
# does not hold it up). Bounded: a boot that never settles is a failure the
# 00-host scenario reports.
for _ in $(seq 1 240); do
    case $(systemctl is-system-running 2>/dev/null) in
        initializing | starting) sleep 0.5 ;;
        *) break ;;
    esac
done
note "$(systemd-analyze time 2>/dev/null | head -n 1)"
note "guest uptime at scenario start: $(cut -d' ' -f1 /proc/uptime)s"

status=0
for scenario in "$suite"/scenarios/*.sh; do
    name=$(basename "$scenario" .sh)
    if [ -n "$only" ] && ! [[ $name =~ $only ]]; then
        continue
    fi
    echo "# --- $name"
    started=$(cut -d' ' -f1 /proc/uptime)
    workdir=$(mktemp -d "/tmp/e2e-$name.XXXXXX")
    rc=0
    (cd "$workdir" && E2E_SCENARIO=$name E2E_TMP=$workdir timeout --kill-after=10 "$scenario_timeout" bash "$scenario") || rc=$?
    if [ "$rc" -eq 124 ]; then
        E2E_SCENARIO=$name fail "scenario" "timed out after ${scenario_timeout}s"
    elif [ "$rc" -ne 0 ]; then
        E2E_SCENARIO=$name fail "scenario" "exited with status $rc outside a check"
    fi
    note "$name took $(awk -v a="$started" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')s"
done

ok=$(grep -c '^ok' "$E2E_RESULTS" || true)
bad=$(grep -c '^FAIL' "$E2E_RESULTS" || true)
skipped=$(grep -c '^SKIP' "$E2E_RESULTS" || true)
note "guest: $ok ok, $bad not ok, $skipped skipped"
[ "$bad" -eq 0 ] || status=1
exit "$status"
