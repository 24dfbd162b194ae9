#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another, and prints the executions
# each one made. Usage: tests/fuzz/run.sh [target...]   (default: all targets)
#   FUZZ_SECS   seconds per target (default 60)
#   FUZZ_JOBS   libFuzzer workers per target (default 1)
# A target with a dicts/<target>.dict (JSON tokens for client frames) is run with it.
# New inputs go to tests/fuzz/corpus/<target>/ (gitignored); the stored regression inputs in
# tests/fuzz/regressions/<target>/ seed every run. A crash leaves its input in
# tests/fuzz/artifacts/<target>/ and makes this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"

secs="${FUZZ_SECS:-60}"
jobs="${FUZZ_JOBS:-1}"
# The machine has a stable toolchain only; cargo fuzz needs the nightly -Z flags, which
# RUSTC_BOOTSTRAP unlocks on stable.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

all=(wire_decode peer_decode context_decode sibling_set_decode commit_log_replay sstable_block sstable_table bloom_filter manifest_decode)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

cargo fuzz build
mkdir -p logs
summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "regressions/$t"
    dict=()
    [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
    par=()
    # With more than one job libFuzzer runs workers that log to fuzz-<n>.log; the script
    # appends those logs to the target's log below.
    [ "$jobs" -gt 1 ] && par=("-jobs=$jobs" "-workers=$jobs")
    rm -f fuzz-*.log
    echo "== $t for ${secs}s"
    status=ok
    if ! cargo fuzz run "$t" "corpus/$t" "regressions/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -max_len=8192 -rss_limit_mb=2048 \
        -timeout=10 "${par[@]}" "${dict[@]}" >"logs/$t.log" 2>&1; then
        status=CRASH
        failed=1
    fi
    for f in fuzz-*.log; do [ -f "$f" ] && cat "$f" >>"logs/$t.log" && rm -f "$f"; done
    # libFuzzer's final stats: stat::number_of_executed_units is the executions of the run.
    execs=$(grep -h 'stat::number_of_executed_units' "logs/$t.log" | awk '{s += $2} END {print s + 0}')
    cov=$(grep -h -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | awk '{print $2}')
    line=$(printf '%-20s %-6s executions %12s  coverage %s' "$t" "$status" "$execs" "${cov:-?}")
    echo "$line"
    [ "$status" = CRASH ] && grep -h -E 'panicked|ERROR: libFuzzer|Test unit written' "logs/$t.log" | head -5
    summary+=("$line")
done
rm -rf /dev/shm/kvd-fuzz-table-* "${TMPDIR:-/tmp}"/kvd-fuzz-table-* 2>/dev/null || true
echo
echo "== summary (${secs}s per target; full logs in tests/fuzz/logs/)"
printf '%s\n' "${summary[@]}"
exit $failed
