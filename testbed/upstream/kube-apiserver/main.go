// The testbed's kube-apiserver: the same few lines as upstream's cmd/kube-apiserver/apiserver.go,
// built from the k8s.io/kubernetes module (see scripts/build-upstream.sh and docs/testbed.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
