// The testbed's etcd: the same line as upstream's server/main.go, built from the
// go.etcd.io/etcd/server/v3 module (see scripts/build-upstream.sh and docs/testbed.md).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
