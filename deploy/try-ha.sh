#!/bin/sh
# Smoke test of deploy/compose.yaml: start 3 managers and 3 agents in containers,
# run a 3-replica service on them, kill the leader manager, check that the cluster
# still answers and writes and that the service's containers were not touched,
# bring the old leader back, then remove everything. Cleans up even when a step
# fails (trap): the compose project with its volumes, and any task container the
# agents left on the engine (found by the node ids of this cluster).
#
# Usage: deploy/try-ha.sh
#   SHOAL_IMAGE=shoal:latest  use this image as is (default: build it with
#                             deploy/build-image.sh, which rebuilds the binary)
#   PROJECT=shoal-try         compose project name (kept apart from the "shoal"
#                             project the commands in compose.yaml use)
#   KEEP=1                    leave the cluster running when a step fails
# Needs docker, docker-compose (1.29) and jq.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
project=${PROJECT:-shoal-try}
file=$top/deploy/compose.yaml
work=$(mktemp -d)
nodes=$work/nodes # node ids of this cluster, for the clean-up
: >"$nodes"
service=tryha$$

for tool in docker docker-compose jq; do
    command -v "$tool" >/dev/null || { echo "try-ha: $tool is needed" >&2; exit 2; }
done

compose() { docker-compose -f "$file" -p "$project" "$@"; }
# shoal CLI inside a manager container (its unix socket).
shoal_on() { m=$1; shift; compose exec -T "$m" shoal "$@"; }
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{ printf "%.1fs", $1 - $2 }'; }
say() { echo "try-ha: $*"; }

# until_true SECONDS WHAT COMMAND...: run COMMAND every half second until it
# succeeds; fail the test after SECONDS.
until_true() {
    limit=$1 what=$2
    shift 2
    start=$(now)
    deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "FAILED: $what within ${limit}s"
            return 1
        fi
        sleep 0.5
    done
    say "$what ($(since "$start"))"
}

task_containers() { # running containers of the service
    docker ps -q --filter "label=shoal.service.id=$service_id" --filter status=running
}
count_is() { [ "$($2 | wc -l)" -eq "$1" ]; }

nodes_json() { shoal_on "$1" node ls --format json; }
# cluster_ready MANAGER: 3 managers, one leader, 3 agents ready.
cluster_ready() {
    nodes_json "$1" | jq -e '
        ([.[] | select(.role == "manager" and .status == "ready")] | length) == 3
        and ([.[] | select(.manager_status == "leader")] | length) == 1
        and ([.[] | select(.role == "worker" and .status == "ready")] | length) == 3' >/dev/null
}
# new_leader MANAGER OLD: a leader other than OLD, and the agents ready.
new_leader() {
    nodes_json "$1" | jq -e --arg old "$2" '
        ([.[] | select(.manager_status == "leader" and .hostname != $old)] | length) == 1
        and ([.[] | select(.role == "worker" and .status == "ready")] | length) == 3' >/dev/null
}
running_tasks() {
    shoal_on "$1" service ps --format json "$service" |
        jq -e --argjson n "$2" '[.[] | select(.state == "running")] | length == $n' >/dev/null
}

cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ "$status" -ne 0 ]; then
        say "failed; the last log lines of the cluster:"
        compose logs --no-color --tail 15 2>&1 | sed 's/^/    /' || true
        if [ "${KEEP:-0}" = 1 ]; then
            say "KEEP=1: left running; remove with: docker-compose -f $file -p $project down -v"
            exit "$status"
        fi
    fi
    compose down -v --timeout 15 >/dev/null 2>&1 || true
    # Containers the agents created on the engine are not compose's: remove those
    # of this cluster's nodes (a passing run has none left).
    while read -r id; do
        left=$(docker ps -aq --filter "label=shoal.node.id=$id")
        if [ -n "$left" ]; then
            say "removing task containers left by node $id"
            docker rm -f $left >/dev/null || true
        fi
        rm -rf "/dev/shm/shoal/$id" 2>/dev/null || true
    done <"$nodes"
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${SHOAL_IMAGE:-}" ]; then
    "$top/deploy/build-image.sh" shoal:latest
fi
"$top/tests/images/build-test-images.sh"

if [ -n "$(compose ps -q)" ]; then
    say "project $project is already running; use PROJECT=... or take it down first" >&2
    trap - EXIT
    exit 2
fi

say "starting 3 managers and 3 agents (project $project)"
t0=$(now)
compose up -d
until_true 120 "3 managers joined and 3 agents ready" cluster_ready manager1
nodes_json manager1 | jq -r '.[].id' >"$nodes"
shoal_on manager1 node ls
say "cluster up in $(since "$t0")"

service_id=$(shoal_on manager1 service create -q --name "$service" --replicas 3 \
    shoal-test/busybox sleep 1d | tr -d '\r')
until_true 60 "3 task containers running" count_is 3 task_containers
before=$(task_containers)
docker ps --filter "label=shoal.service.id=$service_id" --format '    {{.Names}}  {{.Status}}'

leader=$(nodes_json manager1 | jq -r '.[] | select(.manager_status == "leader") | .hostname')
case $leader in manager[123]) ;; *) say "FAILED: no leader found ($leader)"; exit 1 ;; esac
other=manager1
[ "$leader" = manager1 ] && other=manager2
say "killing the leader, $leader; asking $other"
t1=$(now)
compose kill "$leader" >/dev/null 2>&1
# A write through a surviving manager is the proof of a new leader (node ls may
# answer before the election is over); scale is idempotent, so it can be retried.
until_true 30 "a new leader accepts writes (scale to 4 through $other)" \
    shoal_on "$other" service scale -d "$service=4"
failover=$(since "$t1")
until_true 30 "a leader other than $leader listed, 3 agents ready" new_leader "$other" "$leader"
shoal_on "$other" node ls || true
until_true 60 "4 task containers running" count_is 4 task_containers
until_true 30 "the service shows 4 running tasks" running_tasks "$other" 4
for id in $before; do
    if ! task_containers | grep -q "^$id"; then
        say "FAILED: task container $id did not survive the failover"
        exit 1
    fi
done
say "the 3 containers from before the failover still run, untouched"
say "write accepted $failover after the kill"

compose start "$leader" >/dev/null 2>&1
until_true 60 "$leader back, 3 managers again" cluster_ready "$other"

shoal_on "$other" service rm "$service" >/dev/null
until_true 60 "the service's containers removed" count_is 0 task_containers

compose down -v --timeout 15
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
while read -r id; do
    left="$left$(docker ps -aq --filter "label=shoal.node.id=$id")"
done <"$nodes"
if [ -n "$left" ]; then
    say "FAILED: containers left after down: $left"
    exit 1
fi
say "PASSED in $(since "$t0"): no container left"
