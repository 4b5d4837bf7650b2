#!/bin/bash
# The way back (issue: an originals journal and `holdfast rollback`): apply a
# policy touching sysctls, session limits, a service drop-in and a slice;
# `holdfast rollback`; every sysctl back to its value from before, every file
# holdfast created gone, the service back in its original slice after a
# restart, and `check` of the old state clean.
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

journal=/var/lib/holdfast/originals.json
# Start from a host holdfast never touched: no files of its own, no journal.
rm -f /etc/sysctl.d/99-zz-holdfast.conf /etc/security/limits.d/90-holdfast.conf "$journal"
systemctl daemon-reload

printf '[Service]\nExecStart=/bin/sleep infinity\n' >/etc/systemd/system/e2e-rb.service
systemctl daemon-reload
systemctl start e2e-rb.service
old_pid=$(systemctl show -P MainPID e2e-rb.service)
old_nofile=$(awk '/^Max open files/ {print $4 ":" $5}' /proc/"$old_pid"/limits)
old_slice=$(systemctl show -P Slice e2e-rb.service)
old_swappiness=$(cat /proc/sys/vm/swappiness)
old_somaxconn=$(cat /proc/sys/net/core/somaxconn)
old_randomize=$(cat /proc/sys/kernel/randomize_va_space)
new_swappiness=$(( old_swappiness == 13 ? 14 : 13 ))
new_randomize=$(( old_randomize == 2 ? 1 : 2 ))

pol=$E2E_TMP/rollback.yaml
cat >"$pol" <<YAML
version: 1
mode: enforce
sysctl:
  vm.swappiness: $new_swappiness
  net.core.somaxconn: 3072
  kernel.randomize_va_space: $new_randomize
limits:
  - {domain: "@rb", item: nofile, soft: 4096, hard: 8192}
services:
  e2e-rb.service: {slice: rb-app, limit_nofile: 4096}
cgroup:
  slices:
    rb-app: {memory.max: 300M}
YAML
expect_exit "apply converges" "0" holdfast apply --policy "$pol" --restart-services
expect_eq "swappiness set" "$new_swappiness" "$(cat /proc/sys/vm/swappiness)"
expect_eq "randomize_va_space set" "$new_randomize" "$(cat /proc/sys/kernel/randomize_va_space)"
check "the persisted file exists" test -f /etc/sysctl.d/99-zz-holdfast.conf
check "the limits.d file exists" test -f /etc/security/limits.d/90-holdfast.conf
check "the drop-in exists" test -f /etc/systemd/system/e2e-rb.service.d/90-holdfast.conf
check "the slice unit exists" test -f /etc/systemd/system/rb-app.slice
expect_match "the service runs in rb-app.slice" 'rb-app.slice$' "$(systemctl show -P Slice e2e-rb.service)"
check "the journal exists" test -s "$journal"
verify_units "systemd-analyze verify: the drop-in and the slice unit holdfast wrote" \
    /etc/systemd/system/e2e-rb.service /etc/systemd/system/rb-app.slice

capture holdfast rollback --dry-run
expect_eq "rollback --dry-run says something would be rolled back" 2 "$last_status"
check "the dry run changed nothing" test -f /etc/systemd/system/rb-app.slice

capture holdfast rollback --restart-services --format json
rb_json=$last_output
expect_eq "rollback --restart-services restores everything (exit 0)" 0 "$last_status"
[ "$last_status" -eq 0 ] ||
    note "items not restored: $(printf '%s' "$rb_json" | jq -c '[.items[] | select(.result != "restored") | {key, result, detail}], .units' 2>/dev/null)"
check "the journal is gone (every entry restored)" test ! -e "$journal"
expect_eq "swappiness back" "$old_swappiness" "$(cat /proc/sys/vm/swappiness)"
expect_eq "somaxconn back" "$old_somaxconn" "$(cat /proc/sys/net/core/somaxconn)"
expect_eq "randomize_va_space back" "$old_randomize" "$(cat /proc/sys/kernel/randomize_va_space)"
for f in /etc/sysctl.d/99-zz-holdfast.conf /etc/security/limits.d/90-holdfast.conf \
    /etc/systemd/system/e2e-rb.service.d/90-holdfast.conf /etc/systemd/system/rb-app.slice; do
    check "gone: $f" test ! -e "$f"
done
expect_eq "the service is back in its original slice" "$old_slice" "$(systemctl show -P Slice e2e-rb.service)"
new_pid=$(systemctl show -P MainPID e2e-rb.service)
expect_eq "its process has its old limits again" "$old_nofile" "$(awk '/^Max open files/ {print $4 ":" $5}' /proc/"$new_pid"/limits)"
expect_eq "the slice holdfast started is stopped" inactive "$(systemctl show -P ActiveState rb-app.slice)"
# shellcheck disable=SC2016 # expanded by the inner sh -c
check "systemd has no reload pending" sh -c '[ "$(systemctl show -P NeedDaemonReload e2e-rb.service)" = no ]'

# The old state, as a policy: check finds the host exactly so.
old=$E2E_TMP/old-state.yaml
cat >"$old" <<YAML
version: 1
sysctl:
  vm.swappiness: $old_swappiness
  net.core.somaxconn: $old_somaxconn
  kernel.randomize_va_space: $old_randomize
YAML
capture holdfast check --policy "$old"
expect_eq "check of the old state is clean" 0 "$last_status"
capture holdfast check --policy "$pol"
expect_eq "check of the rolled-back policy finds drift" 2 "$last_status"

systemctl stop e2e-rb.service
rm -f /etc/systemd/system/e2e-rb.service "$journal"
systemctl daemon-reload
