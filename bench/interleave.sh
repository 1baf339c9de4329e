#!/usr/bin/env bash
# Interleaved paired run: ROUNDS separate processes (each with its own
# fresh sandbox cluster) run every benchmark once, pgx and pgreplica back
# to back, the order of the pair flipped every other round. Drift of a
# shared machine then lands on both sides alike instead of on whichever
# side -count=10 would have run later.
#
#   bash bench/interleave.sh [ROUNDS] [OUT]     # defaults: 10, /tmp/bench-interleaved.txt
#   benchstat -col /driver OUT
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
out=${2:-/tmp/bench-interleaved.txt}
bin=$(mktemp -d)/bench.test
go test -c -o "$bin" ./bench/
: >"$out"
for i in $(seq 1 "$rounds"); do
	args=()
	if ((i % 2 == 0)); then args=(-reverse); fi
	echo "round $i/$rounds ${args[*]}" >&2
	"$bin" -test.run='^$' -test.bench=. -test.benchmem -test.count=1 "${args[@]}" | tee -a "$out"
done
rm -r "$(dirname "$bin")"
