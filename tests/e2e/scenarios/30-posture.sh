#!/bin/bash
# Service security posture (issue: no-new-privileges, seccomp, capabilities,
# non-root, Go runtime): enforced through the drop-in, verified on the
# running processes; then `holdfast audit` on an unmanaged root service.
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

id e2e-go >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin e2e-go
printf '[Service]\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/e2e-go.service
printf '[Service]\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/e2e-legacy.service
systemctl daemon-reload
systemctl start e2e-go.service e2e-legacy.service

pol=$E2E_TMP/posture.yaml
cat >"$pol" <<'YAML'
version: 1
mode: enforce
services:
  e2e-go.service:
    slice: go-app
    limit_nofile: 65536
    no_new_privileges: true
    seccomp: ["@system-service"]
    capabilities: [CAP_NET_BIND_SERVICE]
    user: e2e-go
    go_runtime: {gomaxprocs: auto, godebug: "madvdontneed=1", gotraceback: single}
cgroup:
  slices:
    go-app: {memory.max: 100M, cpu.max: "100000 1000000", pids.max: 512}
YAML

capture holdfast apply --policy "$pol" --format json
expect_match "posture is restart-required before the restart" '"key": "e2e-go.service no_new_privileges",[^}]*"state": "restart-required"' \
    "$(printf '%s' "$last_output" | tr -d '\n')"
# With what the wait for the new process saw, shown should the check fail.
expect_exit "apply --restart-services" "0" env HOLDFAST_LOG=holdfast::systemd=debug \
    holdfast apply --policy "$pol" --restart-services
verify_units "systemd-analyze verify: the service with holdfast's drop-in, and its slice" \
    /etc/systemd/system/e2e-go.service /etc/systemd/system/go-app.slice
pid=$(systemctl show -P MainPID e2e-go.service)
check "the restarted service has exec'd" test "$(cat /proc/"$pid"/comm)" = sleep
[ "$last_status" -eq 0 ] || note "systemd: $(systemctl show -p MainPID -p ExecMainStartTimestampMonotonic -p ExecMainHandoffTimestampMonotonic e2e-go.service | tr '\n' ' ')"
check "its environment is laid out" wait_until 10 grep -q GOTRACEBACK= /proc/"$pid"/environ
status=/proc/$pid/status
expect_eq "NoNewPrivs" 1 "$(awk '/^NoNewPrivs:/ {print $2}' "$status")"
expect_eq "Seccomp filter mode" 2 "$(awk '/^Seccomp:/ {print $2}' "$status")"
expect_eq "bounding set is exactly CAP_NET_BIND_SERVICE" 0000000000000400 "$(awk '/^CapBnd:/ {print $2}' "$status")"
check "runs as a non-root UID" test "$(awk '/^Uid:/ {print $3}' "$status")" != 0
env_of() { tr '\0' '\n' <"/proc/$pid/environ" | grep "^$1=" | cut -d= -f2-; }

expect_eq "GOMAXPROCS for cpu.max 100000 1000000" 1 "$(env_of GOMAXPROCS)"
expect_eq "GODEBUG" madvdontneed=1 "$(env_of GODEBUG)"
expect_eq "GOTRACEBACK" single "$(env_of GOTRACEBACK)"
expect_exit "check is compliant" "0" holdfast check --policy "$pol"

sarif=$E2E_TMP/audit.sarif
capture sh -c "holdfast audit --format sarif >'$sarif'"
expect_eq "audit exits 2 on findings" 2 "$last_status"
check "the SARIF log is version 2.1.0" grep -q '"version": "2.1.0"' "$sarif"
check "the SARIF log names the unmanaged root service" grep -q 'e2e-legacy.service (PID' "$sarif"
capture holdfast audit
expect_match "the table reports it as root with full capabilities" 'e2e-legacy.service +[0-9]+ +HF004 runs-as-root' "$last_output"
if printf '%s' "$last_output" | grep -q 'e2e-go.service'; then
    fail "the hardened service has no findings" "$(printf '%s' "$last_output" | grep e2e-go.service)"
else
    pass "the hardened service has no findings"
fi
systemctl stop e2e-legacy.service
