#!/bin/bash
# The daemon as a real unit (issue 5): installed from the shipped units,
# Type=notify readiness after the first pass, `curl localhost/status` on :80
# through socket activation, an external `sysctl -w` corrected, a bad policy
# push rejected with its location while the previous policy stays in force,
# a good push applied, a SIGHUP reload, and a clean stop.
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

somaxconn() { cat /proc/sys/net/core/somaxconn; }
before_somaxconn=$(somaxconn)
before_swappiness=$(cat /proc/sys/vm/swappiness)
status_json() { curl -fsS http://localhost/status; }
item_field() { # KEY FIELD: one field of one item of /status
    status_json | jq -r --arg k "$1" ".items[] | select(.key == \$k) | .$2"
}

# The units as the packages ship them, with the binary where the suite puts it.
sed 's|^ExecStart=/usr/bin/holdfast|ExecStart=/usr/local/bin/holdfast|' \
    "$E2E_SUITE/units/holdfast.service" >/etc/systemd/system/holdfast.service
cp "$E2E_SUITE/units/holdfast.socket" /etc/systemd/system/holdfast.socket
# What the .deb's postinst creates (the unit's file system is read-only
# but for these).
mkdir -p /etc/holdfast/policy.d /etc/sysctl.d /etc/security/limits.d \
    /etc/systemd/system /etc/systemd/system.conf.d
cat >/etc/holdfast/policy.d/10-e2e.yaml <<'YAML'
version: 1
mode: enforce
sysctl:
  net.core.somaxconn: 4096
  vm.swappiness: {value: 10, mode: audit}
YAML
# Drift to find at start (the kernel's own default somaxconn is 4096).
sysctl -qw net.core.somaxconn=128
sysctl -qw vm.swappiness=60
systemctl daemon-reload

check "holdfast.socket listens" systemctl start holdfast.socket
check "holdfast.service starts (ready after its first pass)" systemctl start holdfast.service
systemctl is-active --quiet holdfast.service ||
    journalctl -u holdfast.service --no-pager -n 40 | sed 's/^/#     /'
expect_eq "the service is active" active "$(systemctl is-active holdfast.service)"
expect_match "systemd shows holdfast's status line" 'corrected' \
    "$(systemctl show -P StatusText holdfast.service)"
expect_eq "the watchdog is armed" 30s "$(systemctl show -P WatchdogUSec holdfast.service)"
expect_eq "somaxconn corrected by the first pass" 4096 "$(somaxconn)"

check "curl localhost/status answers" status_json
expect_eq "the status is JSON with schema 1" 1 "$(printf '%s' "$last_output" | jq .schema_version)"
expect_match "the sockets came from systemd" 'socket-activation' \
    "$(printf '%s' "$last_output" | jq -r '.daemon.listeners[].origin' | sort -u | tr '\n' ' ')"
check "curl localhost/healthz answers 200" curl -fsS http://localhost/healthz
capture curl -fsS http://localhost/metrics
expect_match "metrics count the corrected settings" \
    'holdfast_settings\{state="corrected"\} [1-9]' "$last_output"
expect_match "metrics show the process's own figures" \
    'process_resident_memory_bytes [1-9]' "$last_output"
check "metrics are gzipped for a client that accepts it" sh -c \
    'curl -fsS -H "Accept-Encoding: gzip" -o /dev/null -D - http://localhost/metrics | tr -d "\r" | grep -qix "content-encoding: gzip"'
check_fails "the API is read-only (POST refused)" curl -fsS -X POST http://localhost/status

# An external writer: inotify on /proc/sys brings the correction.
sysctl -qw net.core.somaxconn=128
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "external drift corrected" wait_until 5 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 4096 ]'
expect_eq "status counts the correction" 2 "$(item_field net.core.somaxconn corrections)"
expect_eq "status shows it corrected" corrected "$(item_field net.core.somaxconn state)"

# A bad push: rejected with file:line, nothing applied, old policy enforced.
printf 'version: 1\nsysctl:\n  net.core.somaxconn: {mni: 1}\n' >/etc/holdfast/policy.d/20-push.yaml
check "the bad push is reported" wait_until 5 sh -c \
    'curl -fsS http://localhost/status | jq -e ".policy.last_error != null" >/dev/null'
expect_match "the error names file and line" '20-push.yaml:3:' \
    "$(status_json | jq -r .policy.last_error.message)"
sysctl -qw net.core.somaxconn=256
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "the previous policy stays in force" wait_until 5 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 4096 ]'
capture journalctl -u holdfast.service --no-pager
expect_match "the journal has the rejection" 'policy push rejected' "$last_output"

# A good push: applied, and persisted for boot.
printf 'version: 1\nsysctl:\n  net.core.somaxconn: 8192\n' >/etc/holdfast/policy.d/20-push.yaml
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "the valid push is applied" wait_until 5 sh -c '[ "$(cat /proc/sys/net/core/somaxconn)" = 8192 ]'
expect_eq "the rejection is cleared" null "$(status_json | jq .policy.last_error)"
check "the value is persisted for boot" grep -qx 'net.core.somaxconn = 8192' /etc/sysctl.d/99-zz-holdfast.conf

check "systemctl reload (SIGHUP)" systemctl reload holdfast.service
check "the reload is a pass" wait_until 5 sh -c \
    'curl -fsS http://localhost/status | jq -e ".last_pass.trigger == \"sighup\"" >/dev/null'
expect_exit "holdfast status exits 2 (an audit-mode setting drifts)" "2" holdfast status
expect_match "holdfast status prints the table" 'vm.swappiness +10 +60 +drifted +audit' "$last_output"

started=$(date +%s%N)
check "systemctl stop" systemctl stop holdfast.service
stopped=$(date +%s%N)
expect_eq "it stopped cleanly" success "$(systemctl show -P Result holdfast.service)"
ms=$(((stopped - started) / 1000000))
note "systemctl stop took ${ms} ms"
check "it stopped within a second" test "$ms" -lt 1000
expect_eq "no restarts along the way" 0 "$(systemctl show -P NRestarts holdfast.service)"

# Leave the host as the next scenario (the package install) wants it.
systemctl stop holdfast.socket
rm -f /etc/systemd/system/holdfast.service /etc/systemd/system/holdfast.socket \
    /etc/holdfast/policy.d/10-e2e.yaml /etc/holdfast/policy.d/20-push.yaml \
    /etc/sysctl.d/99-zz-holdfast.conf
rm -rf /run/holdfast
systemctl daemon-reload
sysctl -qw net.core.somaxconn="$before_somaxconn" vm.swappiness="$before_swappiness"
