#!/bin/sh
# cgroup v1: kubelet (cgroupRoot /kubelet, systemd driver) needs kubelet.slice in every hierarchy; kind's
# entrypoint makes it only in some (not hugetlb on the project's machines), so kubelet refused to start.
[ -f /sys/fs/cgroup/cgroup.controllers ] && exit 0
for d in /sys/fs/cgroup/*/; do
  case "$d" in */systemd/|*/unified/) continue ;; esac
  [ -d "$d/kubelet.slice" ] || mkdir -p "$d/kubelet.slice" 2>/dev/null || true
  [ -d "$d/kubelet" ] || mkdir -p "$d/kubelet" 2>/dev/null || true
done
