#!/usr/bin/env bash
# Alternating end-to-end runs of several missived builds (the first build
# rotating each round), one summary line per run: the way docs/benchmarks.md compares builds on a shared, noisy
# machine (never one run of each). Also prints the guest's stolen CPU time
# over the run (jiffies of /proc/stat's `steal` column, 1/100 s each), since
# on a KVM guest the tail latency follows it.
#
#   bench/e2e-ab.sh RATE ROUNDS BUILD...    e.g. bench/e2e-ab.sh 5300 3 /tmp/missived-old target/release/missived
#
# Needs `cargo build --release --bin missive-bench`, jq, and `ulimit -n` ≥ 20000.
# CONNECTIONS (default 10000), SECONDS_RUN (10) and DIR (/work/benchdata/e2e) override.
set -euo pipefail
rate=$1 rounds=$2
shift 2
bench="$(dirname "$0")/../target/release/missive-bench"
dir=${DIR:-/work/benchdata/e2e}
mkdir -p "$dir"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
steal() { awk '/^cpu /{print $9}' /proc/stat; }
builds=("$@")
for round in $(seq 1 "$rounds"); do
  # Rotate which build goes first each round: the second run of a pair
  # measured lower p50 whichever build it was (docs/benchmarks.md, the
  # chat semantics section), so a fixed order biases the comparison.
  order=()
  for i in "${!builds[@]}"; do
    order+=("${builds[(i + round - 1) % ${#builds[@]}]}")
  done
  for build in "${order[@]}"; do
    # Let the previous run's write-back and file deletion settle first.
    sync
    sleep 15
    s0=$(steal)
    "$bench" e2e --missived "$build" --connections "${CONNECTIONS:-10000}" --rate "$rate" \
      --warmup 3 --seconds "${SECONDS_RUN:-10}" --dir "$dir" --json >"$out" 2>/dev/null
    s1=$(steal)
    jq -r -s --arg b "$build" --arg t "$(date +%T)" --arg st "$((s1 - s0))" '
      def ms: . / 1000 * 10 | round / 10;
      (map({(.workload): .}) | add) as $m
      | $m["e2e send→sent"] as $s | $m["e2e send→delivered"] as $d
      | "\($t) \($b) sent p50/p99 \($s.p50_us|ms)/\($s.p99_us|ms) ms"
        + " delivered p50/p99/p999 \($d.p50_us|ms)/\($d.p99_us|ms)/\($d.p999_us|ms) ms"
        + " \($d.value|round) deliveries/s lag p99 \($m["e2e generator lag"].p99_us|ms) ms"
        + " cpu server \($m["e2e server cpu"].value*100|round/100) generator \($m["e2e generator cpu"].value*100|round/100)"
        + " steal \($st)"' "$out"
  done
done
