#!/usr/bin/env bash
# Measures the queue (issues 6 and 13): the simulation's makespan against
# its lower bound, the worst 1-second window of any datastore against its
# budget, and the process's CPU per job, at 1,000 VMs on 10 datastores and
# 10,000 VMs on 50, with one queue on SQLite and three queues (appliances)
# on one PostgreSQL (started by the benchmark, fsync on); then the
# enqueue-to-start latency and the scheduler's CPU per job on each store,
# with and without 10,000 jobs waiting that cannot start. The numbers
# depend on machine load: the simulation is paced by real token buckets,
# so a starved machine shows up as idle datastores.
# Usage: bench/queue-bench.sh [count]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
count="${1:-1}"
go test -run '^$' -bench 'BenchmarkSimulation' -benchtime=1x -count="$count" -timeout 60m ./queue/
go test -run '^$' -bench 'BenchmarkEnqueueToStart|BenchmarkStoreTransition' -benchtime=300x -timeout 30m ./queue/
