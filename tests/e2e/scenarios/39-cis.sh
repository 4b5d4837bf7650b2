#!/bin/bash
# The shipped CIS policy against the scanner auditors use (issue: agree with
# the compliance scanners): enforced on a real host, every one of its keys —
# the global kernel.* and fs.* ones included, which only a whole host has —
# must pass OpenSCAP's cis_level1_server rule (ComplianceAsCode's content,
# runtime value and sysctl.d configuration both).
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

if ! have_openscap; then
    skip "the CIS policy against OpenSCAP" "Debian $E2E_DEBIAN packages no OpenSCAP scanner or ComplianceAsCode content"
    exit 0
fi

journal=/var/lib/holdfast/originals.json
rm -f /etc/sysctl.d/99-zz-holdfast.conf "$journal"
ssg=/usr/share/xml/scap/ssg/content
profile=xccdf_org.ssgproject.content_profile_cis_level1_server

# Start from values the benchmark fails, the global keys too.
sysctl -qw kernel.randomize_va_space=1 fs.suid_dumpable=2 net.ipv4.ip_forward=1 \
    net.ipv4.conf.all.accept_redirects=1 net.ipv6.conf.all.accept_ra=1

pol=$E2E_TMP/cis
mkdir -p "$pol"
cp "$E2E_SUITE/policies/cis-sysctl-level1.yaml" "$pol/50-cis.yaml"
printf 'version: 1\nmode: enforce\n' >"$pol/90-mode.yaml"
expect_exit "apply of the CIS policy, enforced" "0" holdfast apply --policy "$pol"
expect_eq "kernel.randomize_va_space" 2 "$(cat /proc/sys/kernel/randomize_va_space)"
expect_eq "fs.suid_dumpable" 0 "$(cat /proc/sys/fs/suid_dumpable)"

# The Ubuntu 22.04 content, the closest to Debian (see ssg_ubuntu_content).
content=$E2E_TMP/ssg
ssg_ubuntu_content "$ssg" "$content"
# The keys of the sysctl section (it ends at the next top-level key).
keys=$(awk '/^sysctl:/ {on = 1; next} /^[^ #]/ {on = 0} on && /^  [a-z]/ {sub(":", "", $1); print $1}' "$pol/50-cis.yaml")
rules=()
for key in $keys; do rules+=(--rule "xccdf_org.ssgproject.content_rule_sysctl_${key//./_}"); done
expect_eq "the policy has the benchmark's 25 keys" 25 "$(printf '%s\n' "$keys" | wc -l)"
capture oscap xccdf eval --profile "$profile" "${rules[@]}" "$content/ssg-ubuntu2204-xccdf.xml"
oscap_out=$last_output
results=$(printf '%s\n' "$oscap_out" | tr -d '\r' | awk -F'\t' '$1 == "Rule" {r = $2} $1 == "Result" {print r, $2}')
for key in $keys; do
    rule="xccdf_org.ssgproject.content_rule_sysctl_${key//./_}"
    expect_eq "OpenSCAP: $key" pass "$(printf '%s\n' "$results" | awk -v r="$rule" '$1 == r {print $2}')"
done
note "OpenSCAP $profile: $(printf "%s\n" "$results" | awk '$2 == "pass"' | wc -l) passed of $(( ${#rules[@]} / 2 )) rules"

# Back to the values from before holdfast (and no file of its own left).
expect_exit "rollback" "0" holdfast rollback
