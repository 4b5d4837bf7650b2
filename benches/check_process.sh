#!/usr/bin/env bash
# `holdfast check` as a whole process beside a plain C loop that reads the
# same /proc/sys files: 200 sysctls of the real /proc/sys, each expected at
# its current value (audit mode), so the check is compliant and only reads.
#
#   benches/check_process.sh [-b HOLDFAST_BINARY] [-n KEYS] [-r RUNS] [-k] [-s]
#
#   -b  the holdfast binary (default target/release/holdfast if it exists,
#       else target/debug/holdfast; $CARGO_TARGET_DIR is looked in first)
#   -n  how many sysctls (default 200)
#   -r  timed runs of each command (default 500, in 5 rounds that alternate
#       the two commands, each after 20 warm-up runs)
#   -k  keep the temp directory (the policy, the C loop, the key list), to
#       profile the same check afterwards
#   -s  also time the steps of a check, each as a whole process, and print
#       what each adds: an empty C program, `holdfast --version` (process
#       start, the loader, clap), `validate` of a 1-key and of the N-key
#       policy (reading and parsing the policy), `check` of 1 key (the
#       sysctl.d scan and the fixed costs), and `check` of the N keys on a
#       root whose only content is a link to /proc (no sysctl.d to scan)
#
# Needs gcc (the C loop, benches/check_process.c, is compiled into the temp
# directory at run time), hyperfine (Debian: `apt-get install hyperfine`)
# and jq. hyperfine runs each command with `-N` (no intermediate shell, so
# neither side pays for one) and records whole-process wall times, fork and
# exec included; the script prints the median over all runs. The C loop is
# dynamically linked against libc like holdfast, so both pay the loader.
#
# Read-only: no sysctl is written. The keys are chosen among the readable,
# single-line /proc/sys files whose value did not change between two reads
# (counters such as fs.file-nr or kernel.random.uuid are left out), spread
# over the whole tree; `holdfast check --root /` reads the host's sysctl.d
# directories, /etc/sysctl.conf and holdfast's persisted file as it always
# does: that is part of its real cost. The policy and the C program live in
# one temp directory, removed on exit.
set -euo pipefail

BIN=
N=200
RUNS=500
KEEP=0
STEPS=0
while getopts "b:n:r:ksh" opt; do
    case $opt in
        b) BIN=$OPTARG ;;
        n) N=$OPTARG ;;
        r) RUNS=$OPTARG ;;
        k) KEEP=1 ;;
        s) STEPS=1 ;;
        *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z $BIN ]]; then
    for dir in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR"} "$REPO/target"; do
        for profile in release debug; do
            if [[ -z $BIN && -x $dir/$profile/holdfast ]]; then BIN=$dir/$profile/holdfast; fi
        done
    done
fi
for tool in gcc hyperfine jq; do
    command -v "$tool" >/dev/null || { echo "check_process.sh: $tool is not installed" >&2; exit 2; }
done
[[ -n $BIN && -x $BIN ]] || { echo "check_process.sh: no holdfast binary (cargo build --release first, or -b)" >&2; exit 2; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-check.XXXXXX")
if ((KEEP)); then trap 'echo "kept $DIR (policy.yaml, readloop, keys)"' EXIT; else trap 'rm -rf "$DIR"' EXIT; fi
trap 'exit 130' INT TERM

# --- the keys -----------------------------------------------------------
# KEY<TAB>PATH<TAB>VALUE for every readable single-line file; a dot inside a
# path component (an interface name such as eth0.100) is a slash in the key.
snapshot() {
    find /proc/sys -type f -print0 | sort -z | while IFS= read -r -d '' path; do
        { value=$(tr -s ' \t' '  ' <"$path"); } 2>/dev/null || continue
        value=${value% }
        [[ -n $value && $value != *$'\n'* && $value != *[\'\"\\]* ]] || continue
        rel=${path#/proc/sys/}
        key=$(tr './' '/.' <<<"$rel")
        printf '%s\t%s\t%s\n' "$key" "$path" "$value"
    done
}
snapshot >"$DIR/first"
sleep 0.5
snapshot >"$DIR/second"
# Only keys read the same both times.
comm -12 "$DIR/first" "$DIR/second" >"$DIR/stable"
TOTAL=$(wc -l <"$DIR/stable")
if ((TOTAL < N)); then
    echo "check_process.sh: only $TOTAL stable readable sysctls here (wanted $N)" >&2
    exit 2
fi

gcc -O2 -o "$DIR/readloop" "$REPO/benches/check_process.c"
# The binary runs from a copy. A file the linker has just written is
# slower to fault in than a copy of it (measured here: the same binary
# 0.3 ms slower per run from the linker's output, with more page faults;
# likely the page cache's folio sizes): a copy is what an installed binary
# looks like.
cp "$BIN" "$DIR/holdfast"
SHOWN_BIN=$BIN
BIN=$DIR/holdfast
POLICY=$DIR/policy.yaml
CHECK=("$BIN" check --root / --policy "$POLICY")

# N keys evenly spread over the stable ones; both programs must do their
# work before they are timed: the C loop reads every file, and the check is
# compliant (exit 0) over exactly N sysctls. A key that changed since the
# snapshots (a counter that was still by chance) is dropped and the keys
# are picked again, at most three times.
for attempt in 1 2 3; do
    awk -v n="$N" -v total="$TOTAL" 'BEGIN { step = total / n; next_at = 0 }
        NR - 1 >= next_at && picked < n { print; picked++; next_at += step }' "$DIR/stable" >"$DIR/keys"
    {
        printf 'version: 1\nmode: audit\nsysctl:\n'
        while IFS=$'\t' read -r key _ value; do printf "  %s: '%s'\n" "$key" "$value"; done <"$DIR/keys"
    } >"$POLICY"
    mapfile -t PATHS < <(cut -f2 "$DIR/keys")
    "$DIR/readloop" "${PATHS[@]}"
    if "${CHECK[@]}" --format json >"$DIR/report.json"; then
        break
    fi
    jq -r '.items[] | select(.kind == "sysctl" and .state != "compliant") | .key' "$DIR/report.json" >"$DIR/changed"
    if ((attempt == 3)) || [[ ! -s $DIR/changed ]]; then
        echo "check_process.sh: the check is not compliant; items that are not:" >&2
        jq -r '.items[] | select(.state != "compliant") | "  \(.key): \(.state) \(.actual // "")"' "$DIR/report.json" >&2
        exit 1
    fi
    awk -F '\t' 'NR == FNR { drop[$0] = 1; next } !($1 in drop)' "$DIR/changed" "$DIR/stable" >"$DIR/stable.next"
    mv "$DIR/stable.next" "$DIR/stable"
    TOTAL=$(wc -l <"$DIR/stable")
    ((TOTAL >= N)) || { echo "check_process.sh: fewer than $N stable sysctls left" >&2; exit 2; }
done
ITEMS=$(jq '[.items[] | select(.kind == "sysctl")] | length' "$DIR/report.json")
if [[ $ITEMS != "$N" ]]; then
    echo "check_process.sh: the check reported $ITEMS sysctl items, not $N" >&2
    exit 1
fi

# --- timing -------------------------------------------------------------
# The runs are taken in ROUNDS rounds that alternate the two commands, so a
# change of load on the machine weighs on both alike; the figures are over
# all runs of all rounds.
ROUNDS=5
PER_ROUND=$(((RUNS + ROUNDS - 1) / ROUNDS))
echo "holdfast check, whole process, over $N current-value sysctls of the real /proc/sys (of $TOTAL stable readable ones)"
echo "binary: $SHOWN_BIN ($("$BIN" --version), run from a copy)"
echo "kernel $(uname -r), $(nproc) CPUs; hyperfine $(hyperfine --version | awk '{print $2}') -N, $ROUNDS rounds of $PER_ROUND runs of each command (after 20 warm-up runs each)"
for ((round = 1; round <= ROUNDS; round++)); do
    hyperfine -N --warmup 20 --runs "$PER_ROUND" --style none \
        --export-json "$DIR/times$round.json" \
        -n "C loop" "$DIR/readloop ${PATHS[*]}" \
        -n "holdfast check" "${CHECK[*]}" >/dev/null 2>&1
done
# name -> "median mean min user+sys" in ms over every run of every round.
figures() {
    jq -rs --arg n "$1" '
        [.[].results[] | select(.command == $n)] as $r
        | ([$r[].times[]] | sort) as $t
        | ($t | length) as $len
        | (if $len % 2 == 1 then $t[($len - 1) / 2] else ($t[$len / 2 - 1] + $t[$len / 2]) / 2 end) as $median
        | ([$r[].user] | add / length) as $user
        | ([$r[].system] | add / length) as $sys
        | [$median, ($t | add / $len), $t[0], $user + $sys] | map(. * 1000) | @tsv' "$DIR"/times*.json
}
printf '%-16s %10s %10s %10s %10s\n' "" median mean min "user+sys"
for name in "C loop" "holdfast check"; do
    read -r med mean min cpu < <(figures "$name")
    printf '%-16s %7.3f ms %7.3f ms %7.3f ms %7.3f ms\n' "$name" "$med" "$mean" "$min" "$cpu"
done
C=$(figures "C loop" | cut -f1)
H=$(figures "holdfast check" | cut -f1)
awk -v h="$H" -v c="$C" 'BEGIN { printf "ratio (medians): %.2fx\n", h / c }'

((STEPS)) || exit 0

# --- steps ----------------------------------------------------------------
echo
echo "steps of a check (each a whole process; medians of $RUNS runs; one hyperfine run, so less steady than the figures above):"
printf 'int main(void) { return 0; }\n' >"$DIR/empty.c"
gcc -O2 -o "$DIR/empty" "$DIR/empty.c"
head -4 "$POLICY" >"$DIR/one.yaml"
mkdir -p "$DIR/root-no-conf"
ln -s /proc "$DIR/root-no-conf/proc"
hyperfine -N --warmup 20 --runs "$RUNS" --style none --export-json "$DIR/steps.json" \
    -n "C empty program" "$DIR/empty" \
    -n "C loop" "$DIR/readloop ${PATHS[*]}" \
    -n "holdfast --version" "$BIN --version" \
    -n "validate, 1 key" "$BIN validate --policy $DIR/one.yaml" \
    -n "validate, $N keys" "$BIN validate --policy $POLICY" \
    -n "check, 1 key" "$BIN check --root / --policy $DIR/one.yaml" \
    -n "check, $N keys, no sysctl.d" "$BIN check --root $DIR/root-no-conf --policy $POLICY" \
    -n "check, $N keys" "${CHECK[*]}" >/dev/null 2>&1
step() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .median * 1000' "$DIR/steps.json"; }
for name in "C empty program" "C loop" "holdfast --version" "validate, 1 key" "validate, $N keys" "check, 1 key" "check, $N keys, no sysctl.d" "check, $N keys"; do
    printf '  %-30s %7.3f ms\n' "$name" "$(step "$name")"
done
awk -v e="$(step "C empty program")" -v c="$(step "C loop")" -v v="$(step "holdfast --version")" \
    -v v1="$(step "validate, 1 key")" -v vn="$(step "validate, $N keys")" -v c1="$(step "check, 1 key")" \
    -v nc="$(step "check, $N keys, no sysctl.d")" -v cn="$(step "check, $N keys")" -v n="$N" 'BEGIN {
    printf "what the check adds to the C loop, %.3f ms in all:\n", cn - c
    printf "  %-62s %6.3f ms\n", "process start beyond C (binary, loader, std, clap)", v - e
    printf "  %-62s %6.3f ms\n", "reading and parsing the policy (validate N keys - --version)", vn - v
    printf "  %-62s %6.3f ms\n", "the sysctl.d scan (check N keys - same without sysctl.d)", cn - nc
    printf "  %-62s %6.3f ms\n", "the rest: reads, compare, report (check - validate - scan)", (cn - vn) - (cn - nc) - (c - e)
    printf "  (the C loop'"'"'s own reads, %.3f ms, are left out of the rest; check of 1 key - validate of 1 key: %.3f ms)\n", c - e, c1 - v1
}'
