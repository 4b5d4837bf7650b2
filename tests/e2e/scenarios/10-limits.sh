#!/bin/bash
# Session limits through PAM, and a service's LimitNOFILE through systemd,
# verified on the real processes (issue: resource limits that really apply).
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

pol=$E2E_TMP/limits.yaml
cat >"$pol" <<'YAML'
version: 1
mode: enforce
limits:
  - {domain: "*", item: nofile, soft: 65536, hard: 65536}
services:
  e2e-app.service: {limit_nofile: 65536}
YAML

useradd --create-home --shell /bin/bash e2euser
cat >/etc/systemd/system/e2e-app.service <<'UNIT'
[Unit]
Description=holdfast e2e test service
[Service]
ExecStart=/bin/sleep infinity
UNIT
systemctl daemon-reload
check "test service starts" systemctl start e2e-app.service
old_pid=$(systemctl show -P MainPID e2e-app.service)
note "e2e-app.service MainPID before apply: $old_pid"

expect_exit "check finds drift before apply" "2" holdfast check --policy "$pol"
expect_exit "apply writes limits.d and the drop-in" "0 2" holdfast apply --policy "$pol"
check "managed limits.d file exists" test -f /etc/security/limits.d/90-holdfast.conf
expect_eq "su -l session soft nofile" 65536 "$(su -l e2euser -c 'ulimit -Sn' 2>/dev/null)"
expect_eq "su -l session hard nofile" 65536 "$(su -l e2euser -c 'ulimit -Hn' 2>/dev/null)"

check "drop-in written" grep -qx 'LimitNOFILE=65536:65536' /etc/systemd/system/e2e-app.service.d/90-holdfast.conf
expect_eq "systemd reloaded it (LimitNOFILE)" 65536 "$(systemctl show -P LimitNOFILE e2e-app.service)"
expect_eq "running process keeps its old soft limit" 1024 \
    "$(awk '/^Max open files/ {print $4}' /proc/"$old_pid"/limits)"
capture holdfast check --policy "$pol" --format json
expect_eq "check exits 2 while a restart is pending" 2 "$last_status"
expect_match "service is restart-required" '"key": "e2e-app.service LimitNOFILE",[^}]*"state": "restart-required"' \
    "$(printf '%s' "$last_output" | tr -d '\n')"
expect_eq "holdfast did not restart the service" "$old_pid" "$(systemctl show -P MainPID e2e-app.service)"

expect_exit "apply --restart-services" "0" holdfast apply --policy "$pol" --restart-services
new_pid=$(systemctl show -P MainPID e2e-app.service)
check "the service was restarted" test "$new_pid" != "$old_pid"
expect_eq "restarted process has soft nofile 65536" 65536 \
    "$(awk '/^Max open files/ {print $4}' /proc/"$new_pid"/limits)"
expect_eq "restarted process has hard nofile 65536" 65536 \
    "$(awk '/^Max open files/ {print $5}' /proc/"$new_pid"/limits)"
expect_exit "check is compliant after the restart" "0" holdfast check --policy "$pol"

echo '* soft nofile 1024' >/etc/security/limits.d/99-other.conf
capture holdfast check --policy "$pol"
expect_eq "a shadowing file makes check exit 2" 2 "$last_status"
expect_match "the report names the shadowing file and line" '99-other.conf:1' "$last_output"
rm -f /etc/security/limits.d/99-other.conf
