// The testbed's KMS v1 plugin, for the real kube-apiserver. The project's plugin (testbed/src/kms, Rust) serves
// KMS v1 too, but kube-apiserver's v1 client sends the socket path as the HTTP/2 :authority, which the Rust
// HTTP/2 stack rejects; Go's accepts it, as every real v1 plugin is written in Go. This is the same plugin as the
// Rust one for v1: the same flags, the same key file (one KEK per line, "<id>:<base64 of 32 bytes>", the first
// wraps, all unwrap; re-read on every call, so a rotation needs no signal) and the same sealed layout
// (version 1, id length, id, then AES-256-GCM nonce‖ciphertext‖tag with the header as additional data), so
// either plugin opens what the other sealed. See docs/kms-plugin.md.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v1beta1"
)

const (
	apiVersion  = "v1beta1"
	runtimeName = "atrest-testbed-kms-plugin-v1"
	blobVersion = 1
	nonceSize   = 12
)

type kek struct {
	id  string
	key []byte
}

func wipe(keks []kek) {
	for _, k := range keks {
		clear(k.key)
	}
}

// readKeys parses the key file; errors name the line, never the key.
func readKeys(path string) ([]kek, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(text)
	var keks []kek
	scanner := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; scanner.Scan(); n++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, encoded, found := strings.Cut(line, ":")
		if !found || id == "" || len(id) > 255 {
			wipe(keks)
			return nil, fmt.Errorf("%s:%d: expected <id>:<base64 key>", path, n)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(encoded))
		if err != nil || len(key) != 32 {
			clear(key)
			wipe(keks)
			return nil, fmt.Errorf("%s:%d: the key is not 32 bytes of base64", path, n)
		}
		keks = append(keks, kek{id: id, key: key})
	}
	if len(keks) == 0 {
		return nil, fmt.Errorf("%s: no key", path)
	}
	return keks, nil
}

func header(id string) []byte {
	return append([]byte{blobVersion, byte(len(id))}, id...)
}

func gcm(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

type plugin struct {
	keyFile string
}

func (p *plugin) keys() ([]kek, error) {
	keks, err := readKeys(p.keyFile)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return keks, nil
}

func checkVersion(version string) error {
	if version != "" && version != apiVersion {
		return status.Errorf(codes.InvalidArgument, "unsupported KMS API version %q, only %s is supported", version, apiVersion)
	}
	return nil
}

func (p *plugin) Version(_ context.Context, req *kmsapi.VersionRequest) (*kmsapi.VersionResponse, error) {
	if err := checkVersion(req.Version); err != nil {
		return nil, err
	}
	return &kmsapi.VersionResponse{Version: apiVersion, RuntimeName: runtimeName, RuntimeVersion: "0.1.0"}, nil
}

func (p *plugin) Encrypt(_ context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	if err := checkVersion(req.Version); err != nil {
		return nil, err
	}
	keks, err := p.keys()
	if err != nil {
		return nil, err
	}
	defer wipe(keks)
	aead, err := gcm(keks[0].key)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	blob := header(keks[0].id)
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sealed := aead.Seal(nil, nonce, req.Plain, blob)
	return &kmsapi.EncryptResponse{Cipher: append(append(blob, nonce...), sealed...)}, nil
}

func (p *plugin) Decrypt(_ context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	if err := checkVersion(req.Version); err != nil {
		return nil, err
	}
	blob := req.Cipher
	if len(blob) < 2 || blob[0] != blobVersion || len(blob) < 2+int(blob[1])+nonceSize {
		return nil, status.Error(codes.InvalidArgument, "malformed ciphertext")
	}
	end := 2 + int(blob[1])
	id := string(blob[2:end])
	keks, err := p.keys()
	if err != nil {
		return nil, err
	}
	defer wipe(keks)
	for _, k := range keks {
		if k.id != id {
			continue
		}
		aead, err := gcm(k.key)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		plain, err := aead.Open(nil, blob[end:end+nonceSize], blob[end+nonceSize:], blob[:end])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "key %q: message authentication failed", id)
		}
		return &kmsapi.DecryptResponse{Plain: plain}, nil
	}
	return nil, status.Errorf(codes.NotFound, "unknown key_id %q", id)
}

func main() {
	listen := flag.String("listen", "", "unix:///path/to/socket.sock")
	keyFile := flag.String("key-file", "", "the KEK file (0600; shared with the Rust plugin's format)")
	pidFile := flag.String("pid-file", "", "write the pid here")
	flag.Parse()
	socket, found := strings.CutPrefix(*listen, "unix://")
	if !found || *keyFile == "" {
		log.Fatal("usage: kms-plugin-v1 --listen unix:///path.sock --key-file FILE [--pid-file FILE]")
	}
	keks, err := readKeys(*keyFile)
	if err != nil {
		log.Fatalf("loading the key file: %v", err)
	}
	current := keks[0].id
	wipe(keks)
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("removing the old socket: %v", err)
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listening on %s: %v", socket, err)
	}
	if *pidFile != "" {
		if err := os.WriteFile(*pidFile, fmt.Appendf(nil, "%d\n", os.Getpid()), 0o644); err != nil {
			log.Fatalf("writing the pid file: %v", err)
		}
	}
	server := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(server, &plugin{keyFile: *keyFile})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// The testbed signals a KEK rotation with SIGHUP (the Rust plugin reloads on it); this one re-reads the key
	// file on every call, so SIGHUP must only not end it.
	signal.Ignore(syscall.SIGHUP)
	go func() {
		<-stop
		log.Print("shutting down")
		server.GracefulStop()
	}()
	log.Printf("kms plugin (v1beta1) serving on %s, current key %s", socket, current)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("serving: %v", err)
	}
	_ = os.Remove(socket)
	if *pidFile != "" {
		_ = os.Remove(*pidFile)
	}
}
