#!/usr/bin/env bash
# Client instructions per point SELECT, pgx stdlib against pgreplica, counted
# by callgrind: repeatable on a loaded machine, where CPU time is not.
#
#   go run ./cmd/pgreplica sandbox --replicas 1     # in another terminal
#   export PGREPLICA_BENCH_DSN='postgres://…'       # the DSN it prints
#   bash bench/callgrind.sh [OUTDIR]                # default /tmp/pgreplica-callgrind
#
# Each driver runs BenchmarkPointSelect twice in its own process, 5,000 and
# 25,000 queries; the difference of the two totals over 20,000 is the cost of
# one query with set-up, connections and start-up cancelled out (the whole
# process: pgx, database/sql, the Go runtime and GC, pgreplica's monitor and
# hedge watcher). GOMAXPROCS=1 and no asynchronous preemption: with idle Ps
# the scheduler's spinning varies by thousands of instructions per query from
# run to run; with one P two runs agree within 2%. The per-function split:
#   callgrind_annotate --auto=no OUTDIR/pgreplica-25000.out (minus -5000.out)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PGREPLICA_BENCH_DSN:?set it to a running primary+replica DSN (go run ./cmd/pgreplica sandbox --replicas 1)}"
out=${1:-/tmp/pgreplica-callgrind}
mkdir -p "$out"
bin=$out/bench.test
go test -c -o "$bin" ./bench/
for d in pgx pgreplica; do
	for n in 5000 25000; do
		GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --trace-children=no \
			--callgrind-out-file="$out/$d-$n.out" \
			"$bin" -test.run='^$' -test.bench="PointSelect\$/driver=$d\$" -test.benchtime="${n}x" \
			>"$out/$d-$n.log" 2>&1
	done
	a=$(awk '/Collected/{print $NF}' "$out/$d-5000.log")
	b=$(awk '/Collected/{print $NF}' "$out/$d-25000.log")
	echo "$d: $(((b - a) / 20000)) instructions per query"
done
