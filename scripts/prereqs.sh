#!/usr/bin/env bash
# Installs what the build and the testbed need on a Debian machine (run as root). Safe to repeat: installs only
# what is missing.
#
#   scripts/prereqs.sh           install what is missing, then audit
#   scripts/prereqs.sh --audit   only audit (exit 1 if a need is missing or comes from a package not listed here)
#
# Every need is a file or command, with the Debian package this script installs it from. The audit checks each
# one against dpkg: present, and owned by the package named here (or by a package of the machine image, listed in
# IMAGE_PACKAGES). A machine where someone installed a need by hand, from a package this script does not name,
# fails the audit, so CI cannot pass only because of a hand install: with the old list, a machine without
# libprotobuf-dev now fails here ("descriptor.proto … missing; install package libprotobuf-dev") instead of nine
# minutes into the build. The list names every program and system file the code and scripts run or read;
# scripts/trace-prereqs checks it the hard way (an strace of a whole command, mapped to Debian packages).
set -euo pipefail

# need (command name or absolute path) | package that provides it | what for
NEEDS='
sshd|openssh-server|one sshd per test node
/usr/lib/openssh/sftp-server|openssh-sftp-server|sftp on the test nodes
ssh|openssh-client|ssh client for tests and the demo
ssh-keygen|openssh-client|host and client keys
ssh-agent|openssh-client|the --ssh-agent-auth test
ssh-add|openssh-client|the --ssh-agent-auth test
dockerd|docker.io|one Docker engine per test node
/usr/bin/docker|docker.io|the docker CLI of the engines package (the image may put another docker client first on PATH)
containerd|containerd|the engines runtime (docker.io depends on it)
runc|runc|the engines runtime (docker.io depends on it)
etcd|etcd-server|the etcd members
etcdctl|etcd-client|etcd checks in tests
/bin/busybox|busybox-static|tiny images without a registry
/bin/bash-static|bash-static|bash inside the RKE-shaped images (/opt/rke-tools/entrypoint.sh)
protoc|protobuf-compiler|gRPC code generation (etcd-client, the KMS API)
/usr/include/google/protobuf/descriptor.proto|libprotobuf-dev|well-known .proto includes for etcd-client
unshare|util-linux|per-node mount namespaces
nsenter|util-linux|joining a node namespace
/usr/sbin/xtables-nft-multi|iptables|cutting a test node off the network (R2 of docs/reliability.md), run as iptables
flock|util-linux|testbed slots
sudo|sudo|the testbed optional non-root sudo user
openssl|openssl|certificate checks in tests
file|file|checks on the static busybox
strace|strace|scripts/trace-prereqs (.ci/run traces the lint build)
kubectl|kubernetes-client|kubectl round-trip tests (the machine image has the kubectl package, else Debian kubernetes-client)
'
# Packages the machine image itself provides (not installed by this script; the audit accepts them as owners).
# gcc, g++, make: the C toolchain rustc links with; llvm-14-linker-tools: ld loads its LLVMgold plugin when present;
# locales: glibc reads locale.alias when present (scripts/trace-prereqs saw each in a traced build).
IMAGE_PACKAGES=' kubectl util-linux coreutils tar procps mount bsdutils gcc g++ make llvm-14-linker-tools locales '

audit_only=false
[ "${1:-}" = "--audit" ] && audit_only=true

path_of() {
  case "$1" in
    /*) [ -e "$1" ] && echo "$1" ;;
    *) command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } ;;
  esac
}

if ! $audit_only; then
  missing=()
  while IFS='|' read -r need package _; do
    [ -n "$need" ] || continue
    case " $IMAGE_PACKAGES " in *" $package "*) continue ;; esac
    [ -n "$(path_of "$need")" ] || missing+=("$package")
  done <<<"$NEEDS"
  if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "prereqs: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  mkdir -p /run/sshd
fi

# The audit: every need present and owned by the package named for it (or an image package).
problems=()
while IFS='|' read -r need package why; do
  [ -n "$need" ] || continue
  path=$(path_of "$need") || true
  if [ -z "$path" ]; then
    problems+=("$need ($why): missing; install package $package")
    continue
  fi
  real=$(readlink -f "$path")
  owner=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)
  owner=${owner%%:*}
  owner=${owner%%,*}
  if [ -z "$owner" ]; then
    problems+=("$need ($why): $path belongs to no Debian package (installed by hand?); expected $package")
  elif [ "$owner" != "$package" ]; then
    case " $IMAGE_PACKAGES " in
      *" $owner "*) ;;
      *) problems+=("$need ($why): $path comes from package $owner, not $package as scripts/prereqs.sh says") ;;
    esac
  fi
done <<<"$NEEDS"
if [ ${#problems[@]} -gt 0 ]; then
  echo "prereqs: audit failed:" >&2
  printf '  %s\n' "${problems[@]}" >&2
  exit 1
fi
# Go comes with the machine image (/usr/local/go), not from Debian: scripts/build-upstream.sh builds the real
# kube-apiserver and etcd with it.
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  echo "prereqs: Go not found: scripts/build-upstream.sh builds kube-apiserver and etcd from Go modules (install Go >= 1.23)" >&2
  exit 1
fi
echo "prereqs: ok (audited $(grep -c '|' <<<"$NEEDS") needs)"
