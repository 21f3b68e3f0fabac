#!/usr/bin/env bash
# Builds every fuzz target (cargo fuzz, libFuzzer) and runs each for SECONDS, one after
# the other. `.ci/run` calls it with a few seconds; a long run is the same with more.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 10 seconds, every target)
#
# Works on stable Rust: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo fuzz passes.
# Installs cargo-fuzz when missing. Built without a sanitizer (the code under test is
# safe Rust; panics, overflow checks, timeouts and memory blow-ups are what it finds).
# The seed corpora in fuzz/corpus/TARGET are only read; what a run learns goes to
# fuzz/target/corpus/TARGET (not committed) and is where the next run starts.
# Exits non-zero when a target crashes: the input is saved in fuzz/artifacts/TARGET/ and
# the end of the target's log (the panic and its backtrace) is printed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
cd "$root"

seconds=${1:-10}
[ $# -gt 0 ] && shift
case $seconds in
    '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# The fuzz crate is a workspace of its own with its own target directory; a
# CARGO_TARGET_DIR meant for the main crate must not mix the two builds.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

flags=(--sanitizer none)
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz/run.sh: no fuzz targets found" >&2
    exit 1
fi

echo "== building ${#targets[@]} fuzz targets"
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "built in $(($(date +%s) - start)) s"

mkdir -p "$fuzz/target/logs"
summary=()
failed=0
for target in "${targets[@]}"; do
    work="$fuzz/target/corpus/$target"
    log="$fuzz/target/logs/$target.log"
    mkdir -p "$work"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "$fuzz/dict/$target.dict" ] && args+=(-dict="$fuzz/dict/$target.dict")
    echo "== fuzzing $target for $seconds s"
    if cargo fuzz run "${flags[@]}" "$target" "$work" "$fuzz/corpus/$target" -- "${args[@]}" \
        </dev/null >"$log" 2>&1; then
        status=ok
    else
        status=CRASHED
        failed=$((failed + 1))
        tail -n 60 "$log"
    fi
    # libFuzzer's last status line ("#N DONE cov: C ft: F corp: …") and final stats.
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    summary+=("$(printf '%-20s %-8s runs %-11s cov %-6s ft %-6s corpus %s' \
        "$target" "$status" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
done

echo "== fuzzing summary ($seconds s per target; logs in fuzz/target/logs/)"
printf '%s\n' "${summary[@]}"
if [ "$failed" -gt 0 ]; then
    echo "fuzzing: $failed of ${#targets[@]} targets crashed (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
