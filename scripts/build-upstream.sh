#!/usr/bin/env bash
# Builds the testbed's real upstream parts from Go modules: kube-apiserver (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3) and etcdutl (go.etcd.io/etcd/etcdutl/v3), rke (github.com/rancher/rke) and the KMS v1 plugin (k8s.io/kms), each from its small module under testbed/upstream/. Versions come from
# testbed/upstream/versions.env (the one place; the testbed harness reads it too).
# Each binary is built once per (module version, Go version) into $ATREST_UPSTREAM_CACHE
# (default /var/cache/atrest-upstream when root, else ~/.cache/atrest-upstream) and reused afterwards.
# Static (CGO_ENABLED=0), -trimpath, version ldflags so `kube-apiserver --version` prints the real version.
# The first build is a multi-minute compile (docs/testbed.md has the figures).
# The testbed harness (testbed/src/harness/upstream.rs) finds the binaries in the same cache; it prints the cache
# directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/testbed/upstream
# shellcheck source=/dev/null
. "$root/versions.env"
if [ -z "${ATREST_UPSTREAM_CACHE:-}" ]; then
  if [ "$(id -u)" = 0 ]; then ATREST_UPSTREAM_CACHE=/var/cache/atrest-upstream; else ATREST_UPSTREAM_CACHE=$HOME/.cache/atrest-upstream; fi
fi
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build-upstream: go not found (scripts/prereqs.sh)" >&2; exit 1; }
gover=$(go env GOVERSION)
mkdir -p "$ATREST_UPSTREAM_CACHE"

say() { echo "build-upstream: $*" >&2; }

# build NAME MODULE_DIR VERSION LDFLAGS [PACKAGE]  (PACKAGE: the main package, default the module's own)
build() {
  local name=$1 dir=$2 version=$3 ldflags=$4 package=${5:-.}
  local out=$ATREST_UPSTREAM_CACHE/$name-$version-$gover/$name
  if [ -x "$out" ]; then
    say "$name $version ($gover): cached at $out"
  else
    say "$name $version ($gover): building into $out (the first build downloads modules and compiles for minutes)"
    local t0; t0=$(date +%s)
    mkdir -p "$(dirname "$out")"
    (cd "$dir" && CGO_ENABLED=0 go build -mod=readonly -trimpath -tags grpcnotrace \
      -ldflags "-s -w $ldflags" -o "$out.tmp" "$package")
    mv "$out.tmp" "$out"
    say "$name: built in $(( $(date +%s) - t0 )) s, $(du -h "$out" | cut -f1)"
  fi
}

# The go.mod files pin the versions too; refuse to build something other than versions.env says.
check_pin() {
  local dir=$1 module=$2 version=$3
  if ! grep -qE "^(require )?[[:space:]]*$module $version( // indirect)?\$" "$dir/go.mod"; then
    say "$dir/go.mod does not require $module $version (versions.env); update it: (cd $dir && go get $module@$version && go mod tidy)"
    exit 1
  fi
}
check_pin "$root/kube-apiserver" k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin "$root/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
check_pin "$root/etcd" go.etcd.io/etcd/etcdutl/v3 "$ETCD_VERSION"
check_pin "$root/rke" github.com/rancher/rke "$RKE_VERSION"
kms_module=v0.${KUBERNETES_VERSION#v1.}
check_pin "$root/kms-plugin-v1" k8s.io/kms "$kms_module"

minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
build kube-apiserver "$root/kube-apiserver" "$KUBERNETES_VERSION" \
  "-X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
build etcd "$root/etcd" "$ETCD_VERSION" ""
# etcdutl: upstream's own main package (a `tool` line in the same module); the testbed restores snapshots with it.
build etcdutl "$root/etcd" "$ETCD_VERSION" "" go.etcd.io/etcd/etcdutl/v3
# kms-plugin-v1: the KMS v1 plugin the real server can reach (docs/kms-plugin.md); keyed by its source too.
plugin_src=$(sha256sum "$root/kms-plugin-v1/main.go" | cut -c1-12)
build kms-plugin-v1 "$root/kms-plugin-v1" "$kms_module-$plugin_src" ""
# rke's main package is its module root; the small module names it with a `tool` line and repeats rke's replaces.
# Only the interop tests run it: `--no-rke` (scripts/demo) skips it.
if [ "${1:-}" != "--no-rke" ]; then
  build rke "$root/rke" "$RKE_VERSION" "-X main.VERSION=$RKE_VERSION" github.com/rancher/rke
  # rke-check: our few lines over RKE's own state and config code (what the next `rke up` would do about
  # encryption); keyed by its source too, so an edit rebuilds it.
  check_src=$(sha256sum "$root/rke/rkecheck/main.go" | cut -c1-12)
  build rke-check "$root/rke" "$RKE_VERSION-$check_src" "" ./rkecheck
fi
echo "$ATREST_UPSTREAM_CACHE"
