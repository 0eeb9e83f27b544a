#!/usr/bin/env bash
# Run every cargo-fuzz target of weft for a while, stopping at the first crash.
#
#   crates/fuzz/run.sh [SECONDS]     # SECONDS per target, default 10; works from any directory
#
# Targets are whatever `cargo fuzz list` reports (the [[bin]]s in crates/fuzz/Cargo.toml). Each
# runs over its seed corpus, crates/fuzz/corpus/<target>/ (created if missing). New inputs the
# fuzzer finds go to a scratch directory that is deleted afterwards, so the committed seeds stay
# small; crashes are kept in crates/fuzz/artifacts/<target>/.
#
# Environment:
#   FUZZ_SANITIZER    cargo-fuzz -s value; default "none" on a stable toolchain, "address" on nightly
#   CARGO_TARGET_DIR  honoured if set (weft's helpers use /work/target-fuzz)
set -euo pipefail

seconds="${1:-10}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS]  (SECONDS per target, a positive integer; default 10)" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

if [ -z "${FUZZ_SANITIZER:-}" ]; then
    if rustc --version | grep -q nightly; then
        FUZZ_SANITIZER=address
    else
        FUZZ_SANITIZER=none
    fi
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/weft-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found in $fuzz_dir/Cargo.toml" >&2
    exit 1
fi

echo "building ${#targets[@]} targets (sanitizer: $FUZZ_SANITIZER)"
cargo fuzz build --fuzz-dir "$fuzz_dir" -s "$FUZZ_SANITIZER"

summary=()
for target in "${targets[@]}"; do
    seeds="$fuzz_dir/corpus/$target"
    mkdir -p "$seeds" "$scratch/$target"
    echo "=== $target: ${seconds}s over $seeds"
    log="$scratch/$target.log"
    # The first corpus directory receives new inputs: the scratch one, not the seeds.
    if ! cargo fuzz run --fuzz-dir "$fuzz_dir" -s "$FUZZ_SANITIZER" "$target" \
        "$scratch/$target" "$seeds" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 | tee "$log"; then
        echo "FAILED: $target (crash input saved under $fuzz_dir/artifacts/$target/)" >&2
        exit 1
    fi
    runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n1 | grep -Eo '[0-9]+' || echo '?')"
    summary+=("$(printf '%-12s %12s runs in %ss' "$target" "$runs" "$seconds")")
done

echo "=== all ${#targets[@]} targets passed"
printf '%s\n' "${summary[@]}"
