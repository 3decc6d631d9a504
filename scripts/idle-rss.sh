#!/usr/bin/env bash
# Idle resident memory of a worker binary with 100 runbooks loaded: the idle part of
# benches/worker.rs (same runbooks, same settings, 7 starts, median), for a release binary
# without building the benchmark. Everything stays on 127.0.0.1; the identity endpoint is a
# closed loopback port and no job runs.
#
#   cargo build --release --target-dir /work/wt/<you>-release
#   scripts/idle-rss.sh /work/wt/<you>-release/release/runbook-worker
set -euo pipefail

binary=${1:?usage: idle-rss.sh PATH-TO-runbook-worker}
starts=${STARTS:-7}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/runbooks"
for i in $(seq 0 99); do
  printf -v name 'daily-%03d.toml' "$i"
  cat >"$dir/runbooks/$name" <<EOF
description = "Generated runbook $i"
schedule = "0 $((i % 60)) $((i % 24)) * * *"
timezone = "Europe/Berlin"
overlap = "skip"

[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
parameters = { RecipientTypeDetails = "UserMailbox", ResultSize = "Unlimited" }

[[steps]]
name = "fix"
cmdlet = "Set-Mailbox"
for_each = "find"
when = "item.CustomAttribute1 != 'done'"
concurrency = 4
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", CustomAttribute1 = "done" }
EOF
done

rss=()
anon=()
for _ in $(seq "$starts"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$dir/worker.toml" <<EOF
[runbooks]
dir = "runbooks"
[state]
dir = "state"
[http]
listen = "127.0.0.1:$port"
[identity]
source = "imds"
imds_endpoint = "http://127.0.0.1:9"
EOF
  (cd "$dir" && exec env -i "$binary" --config worker.toml --log-format json serve >/dev/null 2>"$dir/worker.log") &
  pid=$!
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$dir/worker.log" >&2; exit 1; }
  # Let start-up allocations settle before reading the resident size.
  sleep 2
  rss+=("$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")")
  anon+=("$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")")
  kill -TERM "$pid"
  wait "$pid"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m=$(median "${rss[@]}")
a=$(median "${anon[@]}")
awk -v m="$m" -v a="$a" -v n="$starts" -v all="${rss[*]}" 'BEGIN {
  printf "worker idle RSS, 100 runbooks: median %.1f MiB (%.1f MB), of which anonymous %.1f MiB; %d starts (KiB: %s); target < 20 MB: %s\n",
    m/1024, m*1.024/1000, a/1024, n, all, (m*1.024/1000 < 20 ? "met" : "MISSED")
}'
