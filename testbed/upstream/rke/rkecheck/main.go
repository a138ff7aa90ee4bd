// rke-check asks RKE's own code what the next `rke up` would do about secrets encryption, without connecting
// to any node: it reads cluster.yml and cluster.rkestate with RKE's parser and state reader, builds the desired
// and current cluster objects with RKE's InitClusterObject and GetClusterState (the calls `rke up` makes before
// it reconciles encryption), and reports which encryption branch `rke up` would take and the SHA-256 of the
// provider file it would deploy to every controlplane. The atrest tests run it after each step to show that RKE
// reads what atrest left and would change nothing.
//
// It prints one JSON object and never a key: only hashes and booleans.
//
//	rke-check --config cluster.yml
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rancher/rke/cluster"
	"github.com/sirupsen/logrus"
)

type report struct {
	// What `rke up` would do about encryption: "none", "enable" (rewrite every secret), "disable",
	// "config-changed" (restart every kube-apiserver and rewrite every secret) or "rotate"
	// (rotate_encryption_key: true).
	Decision string `json:"decision"`
	// cluster.yml (desired) and currentState's rkeConfig, as RKE reads them.
	DesiredEnabled bool `json:"desiredEnabled"`
	DesiredCustom  bool `json:"desiredCustom"`
	CurrentEnabled bool `json:"currentEnabled"`
	// currentState.rkeConfig is present (RKE treats a cluster without it as new).
	CurrentPresent bool `json:"currentPresent"`
	// SHA-256 of the file `rke up` would write to each controlplane (the provider file plus the newline its
	// file deployer adds); empty when encryption is off.
	DeployedFileSha256 string `json:"deployedFileSha256"`
	// SHA-256 of currentState.encryptionConfig, empty when absent.
	CurrentConfigSha256 string `json:"currentConfigSha256"`
}

func sha(s string) string {
	if s == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func check(clusterFilePath string) (*report, error) {
	ctx := context.Background()
	raw, err := os.ReadFile(clusterFilePath)
	if err != nil {
		return nil, err
	}
	rkeConfig, err := cluster.ParseConfig(string(raw))
	if err != nil {
		return nil, fmt.Errorf("RKE cannot parse %s: %v", clusterFilePath, err)
	}
	flags := cluster.GetExternalFlags(false, false, false, false, "", clusterFilePath)
	state, err := cluster.ReadStateFile(ctx, cluster.GetStateFilePath(flags.ClusterFilePath, flags.ConfigDir))
	if err != nil {
		return nil, fmt.Errorf("RKE cannot read the state: %v", err)
	}
	// As `rke up`: the current state's config when it has one, else the desired state's.
	stateConfig := state.DesiredState.EncryptionConfig
	if state.CurrentState.EncryptionConfig != "" {
		stateConfig = state.CurrentState.EncryptionConfig
	}
	desired, err := cluster.InitClusterObject(ctx, rkeConfig, flags, stateConfig)
	if err != nil {
		return nil, fmt.Errorf("RKE cannot build the desired cluster: %v", err)
	}
	current, err := desired.GetClusterState(ctx, state)
	if err != nil {
		return nil, fmt.Errorf("RKE cannot build the current cluster: %v", err)
	}
	r := &report{
		DesiredEnabled:      desired.IsEncryptionEnabled(),
		DesiredCustom:       desired.IsEncryptionCustomConfig(),
		CurrentPresent:      current != nil,
		CurrentEnabled:      current.IsEncryptionEnabled(),
		CurrentConfigSha256: sha(state.CurrentState.EncryptionConfig),
	}
	if r.DesiredEnabled {
		r.DeployedFileSha256 = sha(desired.EncryptionConfig.EncryptionProviderFile + "\n")
	}
	r.Decision = decide(r, desired, current)
	return r, nil
}

// decide names the branch of RKE's encryption reconcile (cluster/encryption.go) that these objects select.
func decide(r *report, desired, current *cluster.Cluster) string {
	switch {
	case desired.RancherKubernetesEngineConfig.RotateEncryptionKey && r.CurrentEnabled:
		return "rotate"
	case r.DesiredEnabled && !r.CurrentEnabled:
		return "enable"
	case !r.DesiredEnabled && !r.CurrentEnabled:
		return "none"
	case !r.DesiredEnabled && r.CurrentEnabled:
		return "disable"
	case desired.EncryptionConfig.EncryptionProviderFile != current.EncryptionConfig.EncryptionProviderFile:
		return "config-changed"
	default:
		return "none"
	}
}

func main() {
	config := flag.String("config", "cluster.yml", "RKE's cluster file (cluster.rkestate beside it)")
	flag.Parse()
	logrus.SetOutput(os.Stderr)
	abs, err := filepath.Abs(*config)
	if err == nil {
		var r *report
		if r, err = check(abs); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(r)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "rke-check: %v\n", err)
		os.Exit(1)
	}
}
