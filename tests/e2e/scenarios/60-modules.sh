#!/bin/bash
# The kernel modules of the shipped CIS policy on a real kernel (the
# kernel_modules area): one of its seven modules loaded before apply; the
# policy, enforced, writes /etc/modprobe.d/00-holdfast.conf with an
# `install NAME /bin/false` and a `blacklist NAME` line for each, and modprobe
# refuses them from then on; the module that was loaded stays loaded and
# `check` reports it restart-required, until a later policy file says
# `unload: true` and `apply` unloads it; OpenSCAP's kernel_module_*_disabled rules of cis_level1_server
# pass, and so do the profile's sysctl and core dump rules (39-cis checks the
# sysctls in detail); `holdfast serve` sees a module load and unload by the
# kernel's uevents; `holdfast rollback` removes the file.
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$E2E_SUITE/lib.sh"

journal=/var/lib/holdfast/originals.json
own=/etc/modprobe.d/00-holdfast.conf
limits_file=/etc/security/limits.d/90-holdfast.conf
persist=/etc/sysctl.d/99-zz-holdfast.conf
# Start from a host holdfast never touched: 40-install and 50-go leave their
# files and journal behind.
rm -f "$own" "$limits_file" "$persist" "$journal"
ssg=/usr/share/xml/scap/ssg/content
profile=xccdf_org.ssgproject.content_profile_cis_level1_server
loaded_modules() { cut -d' ' -f1 /proc/modules | LC_ALL=C sort; }
is_loaded() { grep -q "^${1//-/_} " /proc/modules; }
# OpenSCAP's sysctl probe walks /proc/sys; its first look into
# /proc/sys/fs/binfmt_misc mounts it (systemd's automount), which loads
# binfmt_misc. Have that happen before the list is taken (in the whole
# suite, 39-cis has done it already).
ls /proc/sys/fs/binfmt_misc >/dev/null 2>&1 || true
modules_before=$(loaded_modules)

pol=$E2E_TMP/cis
mkdir -p "$pol"
cp "$E2E_SUITE/policies/cis-sysctl-level1.yaml" "$pol/50-cis.yaml"
printf 'version: 1\nmode: enforce\n' >"$pol/90-mode.yaml"
# The entries of one top-level section of the policy (it ends at the next
# top-level key).
section() {
    awk -v s="$1:" '$0 == s {on = 1; next} /^[^ #]/ {on = 0} on && /^  [a-z]/ {sub(":", "", $1); print $1}' "$pol/50-cis.yaml"
}
mapfile -t modules < <(section kernel_modules)
expect_eq "the policy disables the profile's seven modules" \
    "cramfs freevxfs hfs hfsplus jffs2 udf usb-storage" "$(printf '%s\n' "${modules[@]}" | LC_ALL=C sort | paste -sd' ')"

# What this kernel has of each: a module file modprobe can load, a part of
# the kernel itself (modprobe.d cannot keep it out: holdfast says
# unsupported), or nothing. Debian's kernel has no cramfs at all
# (CONFIG_CRAMFS is off), and the image leaves out drivers/usb and
# drivers/mtd, so usb-storage is absent and jffs2 is there but cannot load.
kver=$(uname -r)
declare -A kind
for m in "${modules[@]}"; do
    if grep -qE "/${m}\.ko" "/lib/modules/$kver/modules.builtin" 2>/dev/null; then
        kind[$m]=builtin
    elif file=$(modinfo -n "$m" 2>/dev/null) && [ -f "$file" ]; then
        kind[$m]=module
    else
        kind[$m]=absent
    fi
done
note "kernel $kver: $(for m in "${modules[@]}"; do printf '%s %s, ' "$m" "${kind[$m]}"; done)"

# (a) One of them loaded before apply: the first that loads (hfs in Debian's
# kernel, with cdrom, which it needs).
loaded=
for m in hfs hfsplus udf freevxfs; do
    if [ "${kind[$m]:-}" = module ] && ! is_loaded "$m" && modprobe "$m" 2>/dev/null; then
        loaded=$m
        break
    fi
done
if [ -n "$loaded" ]; then
    check "$loaded is loaded before apply" is_loaded "$loaded"
else
    note "skip: none of hfs, hfsplus, udf, freevxfs loads in this kernel; the checks of a loaded module are skipped"
fi
# Another one that this kernel has and that is not loaded: modprobe loads it
# now and must refuse it once the policy is enforced (freevxfs in Debian's
# kernel: it needs no other module, so refusing it loads nothing either;
# modprobe loads a refused module's dependencies before it runs the install
# line).
probe=
for m in freevxfs hfsplus udf hfs; do
    if [ "${kind[$m]:-}" = module ] && [ "$m" != "$loaded" ] && ! is_loaded "$m"; then
        probe=$m
        break
    fi
done
if [ -n "$probe" ]; then
    capture modprobe --show-depends "$probe"
    expect_match "before apply, modprobe would load $probe" "insmod [^ ]*/$probe\.ko" "$last_output"
else
    note "skip: no module of the seven left to try modprobe on; only cramfs is tried"
fi
capture modprobe --show-depends cramfs
note "before apply, modprobe --show-depends cramfs: $last_output"

# (b) The shipped policy, enforced. A loaded module of the seven is
# restart-required, which is drift left after apply: exit 2.
want=0
for m in "${modules[@]}"; do
    if is_loaded "$m"; then want=2; fi
done
capture sh -c "holdfast apply --policy '$pol' --format json >'$E2E_TMP/apply.json'"
expect_eq "apply of the CIS policy, enforced (exit $want)" "$want" "$last_status"
expect_eq "apply: nothing drifted, failed or refused" 0 \
    "$(jq '[.items[] | select(.state | IN("drifted", "failed", "refused", "contested"))] | length' "$E2E_TMP/apply.json")"
expect_eq "apply wrote holdfast's modprobe.d file" corrected \
    "$(jq -r '.items[] | select(.kind == "modprobe-file") | .state' "$E2E_TMP/apply.json")"

# (c) Both lines for each of the seven, spelt as the policy spells them.
check "holdfast's modprobe.d file exists" test -f "$own"
for m in "${modules[@]}"; do
    check "$own: install $m /bin/false" grep -qxF "install $m /bin/false" "$own"
    check "$own: blacklist $m" grep -qxF "blacklist $m" "$own"
    # What modprobe itself would do: the install line, last (after the
    # module's dependencies).
    capture sh -c "modprobe --show-depends $m | tail -n 1"
    expect_match "modprobe runs holdfast's install line for $m" '^install /bin/false' "$last_output"
done
check "limits.d: * hard core 0" grep -qE '^\*[[:space:]]+hard[[:space:]]+core[[:space:]]+0$' "$limits_file"

# (d) modprobe refuses. cramfs is not in Debian's kernel, so its modprobe
# fails either way: the install line above is what decides it now.
check_fails "modprobe cramfs fails" modprobe cramfs
check "cramfs is not in /proc/modules" sh -c '! grep -q "^cramfs " /proc/modules'
if [ -n "$probe" ]; then
    check_fails "modprobe $probe fails (a module this kernel has)" modprobe "$probe"
    check "$probe is not in /proc/modules" sh -c "! grep -q '^$probe ' /proc/modules"
    # The way mount asks for a filesystem: `modprobe fs-TYPE`, an alias,
    # which the blacklist line stops.
    fs_alias=$(modinfo -F alias "$probe" 2>/dev/null | grep -m 1 '^fs-')
    if [ -n "$fs_alias" ]; then
        capture modprobe "$fs_alias"
        check "modprobe $fs_alias (the alias mount uses) leaves $probe unloaded" \
            sh -c "! grep -q '^$probe ' /proc/modules"
    fi
fi

# (e) check: a loaded module is restart-required, and still loaded; the
# others are compliant (or unsupported when built in), and so is the rest of
# the policy.
capture sh -c "holdfast check --policy '$pol' --format json >'$E2E_TMP/check.json'"
expect_eq "check exits $want" "$want" "$last_status"
item_field() { jq -r --arg k "kernel module $1" --arg f "$2" '.items[] | select(.key == $k) | .[$f] | if type == "array" then join(" | ") else . end' "$E2E_TMP/check.json"; }
for m in "${modules[@]}"; do
    if [ "${kind[$m]}" = builtin ]; then
        state=unsupported
    elif is_loaded "$m"; then
        state=restart-required
    else
        state=compliant
    fi
    expect_eq "check: kernel module $m is $state" "$state" "$(item_field "$m" state)"
done
if [ -n "$loaded" ]; then
    expect_eq "check: $loaded is disabled, but loaded" "disabled, but loaded" "$(item_field "$loaded" actual)"
    expect_match "check: the detail says why" 'loaded in the running kernel' "$(item_field "$loaded" detail)"
    check "holdfast did not unload $loaded" is_loaded "$loaded"
fi
expect_eq "check: the rest of the policy (sysctls, core dump limit, files) is compliant" 0 \
    "$(jq '[.items[] | select(.kind != "kernel-module") | select(.state != "compliant")] | length' "$E2E_TMP/check.json")"

# (f) OpenSCAP, with the Ubuntu 22.04 content as 39-cis runs it (without its
# platform checks, which would mark every rule notapplicable on Debian).
#
# What kernel_module_NAME_disabled checks: ComplianceAsCode 0.1.65 (Debian 12's
# ssg-debderived) looks only for a line `^\s*install\s+NAME\s+(/bin/false|
# /bin/true)$` in a *.conf of /etc, /run or /usr/lib modprobe.d or
# modules-load.d, NAME spelt as written. No blacklist line, no line order
# (holdfast's "first install line wins"), no runtime state: the loaded
# module's rule passes too. Later content also requires the module absent
# from /proc/modules (an object `obj_kernmod_NAME_runtime`), not listed in
# modules-load.d and not on the kernel command line; with that content the
# loaded module's rule fails until it is unloaded. Expect what the installed
# content checks, and a pass for every rule once the module is unloaded.
if have_openscap; then
    content=$E2E_TMP/ssg
    ssg_ubuntu_content "$ssg" "$content"
    rule_ids=()
    for m in "${modules[@]}"; do rule_ids+=("kernel_module_${m}_disabled"); done
    rule_ids+=(disable_users_coredumps)
    mapfile -t keys < <(section sysctl)
    expect_eq "the policy has the benchmark's 25 sysctl keys" 25 "${#keys[@]}"
    for key in "${keys[@]}"; do rule_ids+=("sysctl_${key//./_}"); done
    # oscap_eval RULE_ID...: leaves "RULE RESULT" lines in $results.
    oscap_eval() {
        local r args=()
        for r in "$@"; do args+=(--rule "xccdf_org.ssgproject.content_rule_$r"); done
        capture oscap xccdf eval --profile "$profile" "${args[@]}" "$content/ssg-ubuntu2204-xccdf.xml"
        results=$(printf '%s\n' "$last_output" | tr -d '\r' |
            awk -F'\t' '$1 == "Rule" {sub("xccdf_org.ssgproject.content_rule_", "", $2); r = $2} $1 == "Result" {print r, $2}')
    }
    result_of() { printf '%s\n' "$results" | awk -v r="$1" '$1 == r {print $2}'; }
    oscap_eval "${rule_ids[@]}"
    loaded_rule_result=pass
    if [ -n "$loaded" ] && grep -q "obj_kernmod_${loaded}_runtime" "$ssg/ssg-ubuntu2204-oval.xml"; then
        loaded_rule_result=fail
        note "the installed content checks /proc/modules: kernel_module_${loaded}_disabled fails while $loaded is loaded"
    fi
    # Whether the installed content's profile selects a rule at all (newer
    # ComplianceAsCode drops some modules from the Ubuntu 22.04 profile).
    selected() {
        grep -q "idref=\"xccdf_org.ssgproject.content_rule_$1\" selected=\"true\"" "$content/ssg-ubuntu2204-xccdf.xml"
    }
    for r in "${rule_ids[@]}"; do
        want_result=pass
        [ "$r" = "kernel_module_${loaded}_disabled" ] && want_result=$loaded_rule_result
        if [ -z "$(result_of "$r")" ] && ! selected "$r"; then
            skip "OpenSCAP: $r" "the profile of Debian $E2E_DEBIAN's ComplianceAsCode content does not select it"
            continue
        fi
        expect_eq "OpenSCAP: $r" "$want_result" "$(result_of "$r")"
    done
    note "OpenSCAP $profile: $(printf '%s\n' "$results" | awk '$2 == "pass"' | wc -l) passed of ${#rule_ids[@]} rules"
else
    skip "OpenSCAP's kernel_module_*_disabled rules" "Debian $E2E_DEBIAN packages no OpenSCAP scanner or ComplianceAsCode content"
fi

# Unloaded by holdfast, once the policy asks (`unload: true` in a later
# file): apply takes it out of the kernel (only it: what it needs stays
# loaded), then all is compliant, and its rule passes with any content.
if [ -n "$loaded" ]; then
    printf 'version: 1\nkernel_modules:\n  %s: {state: disabled, unload: true}\n' "$loaded" >"$pol/95-unload.yaml"
    capture sh -c "holdfast check --policy '$pol' --format json >'$E2E_TMP/unload-plan.json'"
    expect_eq "check: holdfast plans rmmod $loaded" "rmmod $loaded" \
        "$(jq -r --arg k "kernel module $loaded" '.items[] | select(.key == $k) | .action' "$E2E_TMP/unload-plan.json")"
    needed=$(awk -v m="$loaded" 'index($4 ",", m ",") {printf "%s ", $1}' /proc/modules)
    capture sh -c "holdfast apply --policy '$pol' --format json >'$E2E_TMP/unload.json'"
    expect_eq "apply with unload: true (exit 0)" 0 "$last_status"
    expect_eq "apply: kernel module $loaded corrected" corrected \
        "$(jq -r --arg k "kernel module $loaded" '.items[] | select(.key == $k) | .state' "$E2E_TMP/unload.json")"
    check "holdfast unloaded $loaded" sh -c "! grep -q '^$loaded ' /proc/modules"
    for d in $needed; do
        check "$d, which $loaded needed, stays loaded (rmmod, not modprobe -r)" grep -q "^$d " /proc/modules
    done
    expect_exit "check: compliant once $loaded is unloaded" "0" holdfast check --policy "$pol"
    if have_openscap; then
        oscap_eval "kernel_module_${loaded}_disabled"
        expect_eq "OpenSCAP: kernel_module_${loaded}_disabled once $loaded is unloaded" pass \
            "$(result_of "kernel_module_${loaded}_disabled")"
    fi
fi

# (g) The daemon hears of module loads from the kernel's uevents. With the
# rescan an hour away, a module of the policy loaded behind modprobe's back
# (`modprobe --ignore-install`, as a package's script might) is reported
# restart-required within seconds, and compliant again once unloaded.
if [ -n "$probe" ]; then
    api=http://127.0.0.1:9478
    check "holdfast serve starts (--rescan 1h)" systemd-run --unit=hf-modules -p Type=notify \
        -p NotifyAccess=main /usr/local/bin/holdfast --policy "$pol" serve \
        --listen 127.0.0.1:9478 --rescan 1h
    check "the daemon answers" wait_until 10 curl -fsS "$api/healthz"
    module_state() { curl -fsS "$api/status" | jq -r --arg k "kernel module $1" '.items[] | select(.key == $k) | .state'; }
    module_state_is() { [ "$(module_state "$1")" = "$2" ]; }
    pass_field() { curl -fsS "$api/status" | jq -r ".last_pass.$1"; }
    expect_eq "daemon: $probe is compliant" compliant "$(module_state "$probe")"
    passes=$(pass_field number)
    check "modprobe --ignore-install $probe loads it anyway" modprobe --ignore-install "$probe"
    t0=$SECONDS
    check "daemon: $probe is restart-required, by the kernel's uevent" \
        wait_until 10 module_state_is "$probe" restart-required
    note "module load seen by the daemon within $((SECONDS - t0)) s"
    check "by a pass after the load" test "$(pass_field number)" -gt "$passes"
    check "not by a rescan" test "$(pass_field trigger)" != rescan
    check "modprobe -r $probe" modprobe -r "$probe"
    check "daemon: $probe is compliant again, by its unload's uevent" \
        wait_until 10 module_state_is "$probe" compliant
    systemctl stop hf-modules
fi

# (h) The way back: the file gone, modprobe loads the modules again.
capture holdfast rollback --format json
rb_json=$last_output
expect_eq "rollback restores everything (exit 0)" 0 "$last_status"
[ "$last_status" -eq 0 ] ||
    note "items not restored: $(printf '%s' "$rb_json" | jq -c '[.items[] | select(.result != "restored") | {key, result, detail}]' 2>/dev/null)"
check "rollback removed $own" test ! -e "$own"
check "rollback removed $limits_file" test ! -e "$limits_file"
check "rollback removed $persist" test ! -e "$persist"
check "the journal is gone (every entry restored)" test ! -e "$journal"
if [ -n "$probe" ]; then
    capture modprobe --show-depends "$probe"
    expect_match "after rollback, modprobe would load $probe again" "insmod [^ ]*/$probe\.ko" "$last_output"
fi

# The kernel as the scenario found it: unload what it loaded (a module and
# what it needed; twice, since a module's users go first).
for _ in 1 2; do
    for m in $(LC_ALL=C comm -13 <(printf '%s\n' "$modules_before") <(loaded_modules)); do
        modprobe -r "$m" 2>/dev/null || true
    done
done
expect_eq "the kernel's modules are those from before the scenario" "$modules_before" "$(loaded_modules)"
rm -f "$journal"
