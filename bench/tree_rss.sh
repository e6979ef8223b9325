#!/bin/bash
# tree_rss.sh PID: every 2 s, the RSS of PID and of all its descendants (kB), until PID exits.
root=$1
while kill -0 $root 2>/dev/null; do
  pids="$root $(pgrep -P $root | tr '\n' ' ')"
  for p in $(pgrep -P $root); do pids="$pids $(pgrep -P $p | tr '\n' ' ')"; done
  self=$(awk '/VmRSS/{print $2}' /proc/$root/status 2>/dev/null)
  total=0; for p in $pids; do r=$(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null); total=$((total + ${r:-0})); done
  echo "$(date +%s) $self $total"
  sleep 2
done
