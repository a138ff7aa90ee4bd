#!/usr/bin/env bash
# Installs what the testbed needs on a Debian machine (run as root). Safe to repeat: installs only what is missing.
# Packages: OpenSSH's sshd (one per test node), Debian's Docker engine (one dockerd per node), etcd (server and
# etcdctl), a static busybox (tiny images without a registry), protoc (gRPC code generation for etcd-client/KMS),
# bash-static (the bash of the RKE-shaped images: /opt/rke-tools/entrypoint.sh), Go (scripts/build-upstream.sh).
set -euo pipefail
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
[ -x /bin/busybox ] && file /bin/busybox 2>/dev/null | grep -q static || command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)          # ssh, ssh-keygen: keys, checks, forwards
command -v unshare >/dev/null 2>&1 || need+=(util-linux)           # unshare/nsenter: per-node mount namespaces
command -v docker >/dev/null 2>&1 || need+=(docker.io)             # the docker CLI drives each node's engine
[ -x /bin/bash-static ] || need+=(bash-static)                      # bash inside the rke-tools/hyperkube-shaped images
[ -x /usr/bin/sudo ] || need+=(sudo)                                 # the testbed's optional non-root sudo user
if [ ${#need[@]} -gt 0 ]; then
  echo "prereqs: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p /run/sshd
command -v kubectl >/dev/null 2>&1 || echo "prereqs: note: kubectl not found; kubectl round-trip tests will be skipped" >&2
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || { echo "prereqs: Go not found: scripts/build-upstream.sh builds kube-apiserver and etcd from Go modules (install Go >= 1.23)" >&2; exit 1; }
echo "prereqs: ok"
