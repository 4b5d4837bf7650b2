#!/usr/bin/env bash
# Fleet benchmark: N `holdfast serve` agents on small fake roots, scraped by a
# real Prometheus with the shipped alert rules loaded; faults are injected on
# chosen agents and the script reports what a fleet operator would see.
#
#   benches/fleet.sh [-n AGENTS] [-b HOLDFAST_BINARY] [-p BASE_PORT] [-t SECONDS]
#
#   -n  agents (default 100, at least 10: agents 1-9 carry the faults)
#   -b  the holdfast binary (default target/release/holdfast if it exists,
#       else target/debug/holdfast)
#   -p  Prometheus listens on BASE_PORT, agent i on BASE_PORT+i (default 39000)
#   -t  how long to wait for the alerts after the faults (default 150 s)
#
# Needs prometheus and promtool (Debian: `apt-get install prometheus`), curl,
# jq, unshare (agent 8 runs in a user namespace). Everything listens on
# 127.0.0.1 only, lives in one temp directory, and is stopped and removed on
# exit. The fake roots are the agents' only hosts: the `failed` agent reads
# one real sysctl through a symlink and holdfast refuses to write through
# it, so nothing on the host changes. Measured as root.
#
# The agents and their faults (agent i is instance 127.0.0.1:BASE_PORT+i):
#   1  compliant 500-key audit policy (the series-per-host acceptance: <= 80)
#   2  drift:      an audit-mode key is set off its value      -> HoldfastSettingDrift
#   3  contested:  another process reverts an enforced key every second
#                                                              -> HoldfastSettingContested
#   4  rejected:   an invalid policy file is pushed             -> HoldfastPolicyRejected
#   5  failed:     an enforced key whose write holdfast refuses (a symlink out
#                  of the root)                                 -> HoldfastSettingFailed
#   6  down:       the agent is killed                          -> HoldfastDown
#   7  listener:   a second --listen address that is taken      -> HoldfastListenerDown
#   8  watch:      runs in a user namespace whose inotify watch limit is 4
#                  (fs.inotify.max_user_watches exhausted)      -> HoldfastWatchErrors
#   9  stalled:    --rescan 2s, and a /proc/sys file becomes a FIFO: the loop
#                  blocks reading it while the API still answers
#                                                              -> HoldfastStalled
#   others: 20 enforced keys and one audited key, all compliant.
#
# The shipped rules wait 1 to 30 minutes (`for:`) before firing; so that a
# bounded run can see every alert fire, the benchmark loads a copy of
# packaging/prometheus/holdfast-alerts.yml with every `for:` set to 10s (the
# expressions are unchanged) and says so in its output.
set -euo pipefail

N=100
BIN=
BASE=39000
WAIT=150
while getopts "n:b:p:t:h" opt; do
    case $opt in
        n) N=$OPTARG ;;
        b) BIN=$OPTARG ;;
        p) BASE=$OPTARG ;;
        t) WAIT=$OPTARG ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done
if ((N < 10)); then
    echo "fleet.sh: -n must be at least 10 (agents 1-9 carry the faults)" >&2
    exit 2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
RULES=$REPO/packaging/prometheus/holdfast-alerts.yml
if [[ -z $BIN ]]; then
    if [[ -x $REPO/target/release/holdfast ]]; then
        BIN=$REPO/target/release/holdfast
    else
        BIN=$REPO/target/debug/holdfast
    fi
fi
for tool in prometheus promtool curl jq unshare mkfifo; do
    command -v "$tool" >/dev/null || { echo "fleet.sh: $tool is not installed" >&2; exit 2; }
done
[[ -x $BIN ]] || { echo "fleet.sh: no holdfast binary at $BIN (cargo build first)" >&2; exit 2; }
for ((i = 0; i <= N; i++)); do
    if ss -Hltn "sport = :$((BASE + i))" | grep -q .; then
        echo "fleet.sh: port $((BASE + i)) is taken; choose another -p" >&2
        exit 2
    fi
done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-fleet.XXXXXX")
PIDS=()
PROM_PID=
# shellcheck disable=SC2317 # run by the EXIT trap (shellcheck 0.9 calls it unreachable after the final exit)
cleanup() {
    set +e
    local p
    for p in "${PIDS[@]}" $PROM_PID; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    # The stalled agent's loop is blocked on a FIFO and cannot finish its
    # pass; whatever did not stop within a second is killed.
    for p in "${PIDS[@]}" $PROM_PID; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

START=$(date +%s)
port() { echo $((BASE + $1)); }
inst() { echo "127.0.0.1:$(port "$1")"; }
root() { echo "$DIR/root$1"; }
prom_query() { # PromQL -> the JSON result vector
    curl -sf --get "http://127.0.0.1:$BASE/api/v1/query" --data-urlencode "query=$1" | jq -c '.data.result'
}
scalar() { prom_query "$1" | jq -r '.[0].value[1] // "n/a"'; }
ms() { prom_query "$1" | jq -r '.[0].value[1] // empty | tonumber * 1000 | . * 100 | round / 100 | "\(.) ms"'; }

# --- fake roots ---------------------------------------------------------
make_root() { # i keys: a fake host with KEYS compliant sysctls and a policy
    local r; r=$(root "$1")
    mkdir -p "$r/proc/sys/net/fleet" "$r/etc/sysctl.d" "$r/etc/holdfast/policy.d"
    printf 'MemTotal:       16000000 kB\nSwapTotal:             0 kB\nHugetlb:               0 kB\nCommitLimit:     8000000 kB\nCommitted_AS:    1000000 kB\n' >"$r/proc/meminfo"
    local policy=$r/etc/holdfast/policy.d/10-fleet.yaml
    if [[ $2 == big ]]; then
        printf 'version: 1\nmode: audit\nsysctl:\n' >"$policy"
        for ((k = 0; k < 500; k++)); do
            echo 1 >"$r/proc/sys/net/fleet/key$k"
            echo "  net.fleet.key$k: 1" >>"$policy"
        done
    else
        printf 'version: 1\nmode: enforce\nsysctl:\n' >"$policy"
        for ((k = 0; k < 20; k++)); do
            echo 1 >"$r/proc/sys/net/fleet/key$k"
            echo "  net.fleet.key$k: 1" >>"$policy"
        done
        echo 1 >"$r/proc/sys/net/fleet/audited"
        echo "  net.fleet.audited: {value: 1, mode: audit}" >>"$policy"
    fi
}
for ((i = 1; i <= N; i++)); do
    if ((i == 1)); then make_root "$i" big; else make_root "$i" small; fi
done
# failed: holdfast reads the real kernel.ngroups_max through the link but
# refuses to write through a symlink out of its root (the key is pushed with
# the faults).
mkdir -p "$(root 5)/proc/sys/kernel"
ln -s /proc/sys/kernel/ngroups_max "$(root 5)/proc/sys/kernel/ngroups_max"
# stalled: an extra audited key whose file becomes a FIFO later.
echo 1 >"$(root 9)/proc/sys/net/fleet/stall"
echo "  net.fleet.stall: {value: 1, mode: audit}" >>"$(root 9)/etc/holdfast/policy.d/10-fleet.yaml"

# --- agents -------------------------------------------------------------
start_agent() { # i [extra serve args...]
    local i=$1; shift
    HOLDFAST_LOG=warn "$BIN" --root "$(root "$i")" serve --listen "$(inst "$i")" "$@" \
        >/dev/null 2>"$DIR/agent$i.log" &
    PIDS[i]=$!
}
for ((i = 1; i <= N; i++)); do
    case $i in
        7) ;; # started once Prometheus holds its port (below)
        8) # 4 inotify watches for the whole user namespace.
            HOLDFAST_LOG=warn unshare --user --map-root-user sh -c \
                'echo 4 >/proc/sys/user/max_inotify_watches && exec "$@"' sh \
                "$BIN" --root "$(root 8)" serve --listen "$(inst 8)" \
                >/dev/null 2>"$DIR/agent8.log" &
            PIDS[8]=$!
            ;;
        9) start_agent "$i" --rescan 2s ;;
        *) start_agent "$i" ;;
    esac
done

# --- Prometheus ---------------------------------------------------------
mkdir -p "$DIR/prom"
sed -E 's/^( +for: ).*/\110s/' "$RULES" >"$DIR/prom/rules.yml"
promtool check rules "$DIR/prom/rules.yml" >/dev/null
{
    printf 'global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 2s\n'
    printf 'rule_files: [%s]\n' "$DIR/prom/rules.yml"
    printf 'scrape_configs:\n  - job_name: fleet\n    static_configs:\n      - targets:\n'
    for ((i = 1; i <= N; i++)); do printf '          - "%s"\n' "$(inst "$i")"; done
} >"$DIR/prom/prometheus.yml"
prometheus --config.file="$DIR/prom/prometheus.yml" \
    --web.listen-address="127.0.0.1:$BASE" \
    --storage.tsdb.path="$DIR/prom/data" --storage.tsdb.retention.time=1h \
    --web.enable-lifecycle >"$DIR/prom/log" 2>&1 &
PROM_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$BASE/-/ready" >/dev/null && break
    sleep 0.2
done
curl -sf "http://127.0.0.1:$BASE/-/ready" >/dev/null || { echo "Prometheus did not start:"; tail "$DIR/prom/log"; exit 1; }
# Agent 7's second address is Prometheus's, taken by now.
start_agent 7 --listen "127.0.0.1:$BASE"

# Every agent healthy?
healthy=0
deadline=$(($(date +%s) + 20))
for ((i = 1; i <= N; i++)); do
    while :; do
        curl -sf "http://$(inst "$i")/healthz" >/dev/null && { healthy=$((healthy + 1)); break; }
        (($(date +%s) < deadline)) || break
        sleep 0.1
    done
done
echo "holdfast fleet benchmark: $N agents ($BIN), Prometheus $(prometheus --version 2>&1 | awk 'NR==1{print $3}'), scrape and rule evaluation every 2 s"
echo "NOTE: the rules loaded are packaging/prometheus/holdfast-alerts.yml with every 'for:' shortened to 10s (expressions unchanged), so that each alert can fire within a bounded run."
echo "agents healthy: $healthy/$N ($(($(date +%s) - START)) s after start)"

# Wait until Prometheus has scraped every target a few times. Each wait is
# bounded: the whole run takes at most about 4.5 minutes.
for _ in $(seq 30); do
    up=$(scalar 'count(up{job="fleet"} == 1)')
    [[ $up == "$N" ]] && break
    sleep 1
done
sleep 5
echo "targets up: $(scalar 'count(up{job="fleet"} == 1)')/$N"

# --- compliant fleet figures -------------------------------------------
echo
echo "== compliant fleet (before the faults)"
series_of() { scalar "scrape_samples_scraped{instance=\"$(inst "$1")\"}"; }
echo "series per host, 500-key compliant policy (agent 1): $(series_of 1)   (acceptance: <= 80)"
echo "series per host, 21-key compliant policy (agents 2-$N): min $(scalar "min(scrape_samples_scraped{job=\"fleet\",instance!=\"$(inst 1)\"})") max $(scalar "max(scrape_samples_scraped{job=\"fleet\",instance!=\"$(inst 1)\"})")"
BIG_SERIES=$(series_of 1)
echo "holdfast_setting_drift series in the fleet: $(scalar 'count(holdfast_setting_drift) or vector(0)')"
bytes() { # i gzip|plain
    local h=()
    [[ $2 == gzip ]] && h=(-H 'Accept-Encoding: gzip')
    curl -s "${h[@]}" -o /dev/null -w '%{size_download}' "http://$(inst "$1")/metrics"
}
echo "bytes per scrape of /metrics: 500-key agent $(bytes 1 plain) plain, $(bytes 1 gzip) gzip; 21-key agent $(bytes 10 plain) plain, $(bytes 10 gzip) gzip"
echo "prometheus_tsdb_head_series: $(curl -s "http://127.0.0.1:$BASE/metrics" | awk '/^prometheus_tsdb_head_series /{print $2}')"
echo "scrape_duration_seconds over the fleet (last scrape of each target): median $(ms 'quantile(0.5, scrape_duration_seconds{job="fleet"})'), p99 $(ms 'quantile(0.99, scrape_duration_seconds{job="fleet"})'), max $(ms 'max(scrape_duration_seconds{job="fleet"})'); max over the last minute $(ms 'max(max_over_time(scrape_duration_seconds{job="fleet"}[1m]))')"
rss=0
for ((i = 1; i <= N; i++)); do
    r=$(awk '/^VmRSS/{print $2}' "/proc/${PIDS[i]}/status" 2>/dev/null || echo 0)
    rss=$((rss + r))
done
echo "agents' RSS: $((rss / 1024)) MiB in all, $((rss / N)) KiB each on average; Prometheus RSS $(awk '/^VmRSS/{print int($2/1024)}' "/proc/$PROM_PID/status") MiB"
echo "alerts firing before the faults: $(curl -sf "http://127.0.0.1:$BASE/api/v1/alerts" | jq '[.data.alerts[] | select(.state=="firing")] | length')"

# --- faults -------------------------------------------------------------
echo
echo "== faults injected at +$(($(date +%s) - START)) s"
echo 0 >"$(root 2)/proc/sys/net/fleet/audited"                       # drift
( while :; do echo 0 >"$(root 3)/proc/sys/net/fleet/key0"; sleep 1; done ) &
PIDS[N + 1]=$!                                                         # contested
printf 'version: 1\nsysctl:\n  net.fleet.key0: {mni: 1}\n' >"$(root 4)/etc/holdfast/policy.d/20-bad.yaml" # rejected
printf 'version: 1\nmode: enforce\nsysctl:\n  kernel.ngroups_max: 1000\n' >"$(root 5)/etc/holdfast/policy.d/30-ngroups.yaml" # failed
{ kill -KILL "${PIDS[6]}" && wait "${PIDS[6]}"; } 2>/dev/null || true  # down
mkfifo "$(root 9)/proc/sys/net/fleet/stall.fifo"                       # stalled
mv "$(root 9)/proc/sys/net/fleet/stall.fifo" "$(root 9)/proc/sys/net/fleet/stall"
# (the listener and watch faults are there from the start)

declare -A WANT=(
    [HoldfastSettingDrift]=2 [HoldfastSettingContested]=3 [HoldfastPolicyRejected]=4
    [HoldfastSettingFailed]=5 [HoldfastDown]=6 [HoldfastListenerDown]=7
    [HoldfastWatchErrors]=8 [HoldfastStalled]=9
)
mapfile -t RULE_NAMES < <(awk '/- alert:/{print $3}' "$RULES")
firing() { curl -sf "http://127.0.0.1:$BASE/api/v1/alerts" | jq -r '.data.alerts[] | select(.state=="firing") | "\(.labels.alertname) \(.labels.instance)"' | sort -u; }
T0=$(date +%s)
declare -A FIRED_AT=()
while (($(date +%s) - T0 < WAIT)); do
    now=$(firing)
    for a in "${RULE_NAMES[@]}"; do
        if [[ -z ${FIRED_AT[$a]:-} ]] && grep -qx "$a $(inst "${WANT[$a]:-0}")" <<<"$now"; then
            FIRED_AT[$a]=$(($(date +%s) - T0))
        fi
    done
    ((${#FIRED_AT[@]} == ${#RULE_NAMES[@]})) && break
    sleep 2
done

echo
echo "== alerts (the rules' 'for:' shortened to 10s)"
# activeAt is when the condition became true and has held since (a gap
# would reset it): how long the alert has been active without a break.
ALERTS_JSON=$(curl -sf "http://127.0.0.1:$BASE/api/v1/alerts")
NOW=$(date +%s)
active_for() { # alertname instance -> seconds active without a break
    jq -r --arg a "$1" --arg i "$2" --argjson now "$NOW" '[.data.alerts[] | select(.labels.alertname==$a and .labels.instance==$i) | .activeAt | sub("\\.[0-9]+"; "") | fromdateiso8601] | if length == 0 then "-" else "\($now - min) s" end' <<<"$ALERTS_JSON"
}
printf '%-26s %-6s %-16s %-16s %s\n' alert fired "on" "after the fault" "active without a break for"
missing=0
for a in "${RULE_NAMES[@]}"; do
    if [[ -n ${FIRED_AT[$a]:-} ]]; then
        printf '%-26s %-6s %-16s %-16s %s\n' "$a" yes "$(inst "${WANT[$a]:-0}")" "${FIRED_AT[$a]} s" "$(active_for "$a" "$(inst "${WANT[$a]:-0}")")"
    else
        printf '%-26s %-6s %-16s %s\n' "$a" NO "$(inst "${WANT[$a]:-0}")" "not within $WAIT s"
        missing=$((missing + 1))
    fi
done
echo
echo "firing alerts and their labels (from /api/v1/alerts):"
curl -sf "http://127.0.0.1:$BASE/api/v1/alerts" | jq -r '.data.alerts[] | select(.state=="firing") | "  \(.labels.alertname) {\(.labels | del(.alertname) | to_entries | map("\(.key)=\"\(.value)\"") | join(", "))}"' | sort
unexpected=$(firing | while read -r a i; do [[ "$(inst "${WANT[$a]:-0}")" == "$i" ]] || echo "$a $i"; done)
echo "alerts on an instance that has no such fault: ${unexpected:-none}"

echo
echo "== with the faults"
echo "holdfast_setting_drift series (one per drifting setting, none elsewhere):"
prom_query 'holdfast_setting_drift' | jq -r '.[] | "  \(.metric.instance) kind=\(.metric.kind) key=\(.metric.key) state=\(.metric.state)"' | sort
echo "series per host: agents without a fault min $(scalar "min(scrape_samples_scraped{job=\"fleet\",instance!~\"127.0.0.1:($(port 2)|$(port 3)|$(port 4)|$(port 5)|$(port 6)|$(port 7)|$(port 8)|$(port 9))\"})") max $(scalar "max(scrape_samples_scraped{job=\"fleet\",instance!~\"127.0.0.1:($(port 2)|$(port 3)|$(port 4)|$(port 5)|$(port 6)|$(port 7)|$(port 8)|$(port 9))\"})"); drift $(series_of 2), contested $(series_of 3), failed $(series_of 5)"
echo "prometheus_tsdb_head_series: $(curl -s "http://127.0.0.1:$BASE/metrics" | awk '/^prometheus_tsdb_head_series /{print $2}')"
echo "scrape_duration_seconds: median $(ms 'quantile(0.5, scrape_duration_seconds{job="fleet"})'), p99 $(ms 'quantile(0.99, scrape_duration_seconds{job="fleet"})'), max $(ms 'max(scrape_duration_seconds{job="fleet"})'); max over the run $(ms "max(max_over_time(scrape_duration_seconds{job=\"fleet\"}[$(($(date +%s) - START))s]))")"
DRIFT_SERIES=$(prom_query 'holdfast_setting_drift' | jq -r '.[] | "\(.metric.instance) \(.metric.key) \(.metric.state)"' | sort | tr '\n' ';')
WANT_DRIFT=$(printf '%s\n' "$(inst 2) net.fleet.audited drifted" "$(inst 3) net.fleet.key0 contested" "$(inst 5) kernel.ngroups_max failed" | sort | tr '\n' ';')
echo
echo "== acceptance"
fail=0
verdict() { # 0|1 description
    if (($1 == 0)); then echo "PASS  $2"; else echo "FAIL  $2"; fail=1; fi
}
ok=1; [[ $BIG_SERIES =~ ^[0-9]+$ ]] && ((BIG_SERIES <= 80)) && ok=0
verdict $ok "series per host <= 80 for a compliant 500-key policy ($BIG_SERIES)"
ok=1; [[ $DRIFT_SERIES == "$WANT_DRIFT" ]] && ok=0
verdict $ok "per-setting series only for the drifting settings (${DRIFT_SERIES:-none})"
verdict $((missing > 0)) "every alert in the rules fired for its fault ($missing did not)"
ok=1; [[ -z $unexpected ]] && ok=0
verdict $ok "no alert fired on an instance without its fault"
echo
echo "total run time: $(($(date +%s) - START)) s"
exit $fail
