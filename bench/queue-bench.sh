#!/usr/bin/env bash
# Measures the queue (issue 6): the makespan of the 1,000-VM simulation
# against its lower bound, and the scheduler overhead per job (enqueue to
# start, with free budget). The numbers depend on machine load: the
# simulation is paced by real token buckets, so a starved machine shows up
# as idle datastores. Usage: bench/queue-bench.sh [count]
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-3}"
go test -run '^$' -bench 'BenchmarkSimulation' -benchtime=1x -count="$count" ./queue/
go test -run '^$' -bench 'BenchmarkEnqueueToStart|BenchmarkStoreTransition' -benchtime=500x ./queue/
