package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Tests of the command line: bad flags stop paxoslog at start with one
// line on stderr and exit status 2; good ones become options.

func TestMainBadFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args func(t *testing.T, dir string) []string // dir is a fresh, usable data directory
		want string                                  // a fragment of the one line
	}{
		{"id zero", func(_ *testing.T, d string) []string { return []string{"--id", "0", "--data", d} }, "--id must be an integer from 1 to"},
		{"id not a number", func(_ *testing.T, d string) []string { return []string{"--id", "abc", "--data", d} }, "invalid value"},
		{"id negative", func(_ *testing.T, d string) []string { return []string{"--id=-2", "--data", d} }, "invalid value"},
		{"id too large", func(_ *testing.T, d string) []string { return []string{"--id", "99999999999", "--data", d} }, "--id must be an integer from 1 to"},
		{"unknown flag", func(_ *testing.T, d string) []string { return []string{"--nodes", "3", "--data", d} }, "flag provided but not defined"},
		{"stray argument", func(_ *testing.T, d string) []string { return []string{"--data", d, "serve"} }, "unexpected argument"},
		{"listen without a port", func(_ *testing.T, d string) []string { return []string{"--listen", "localhost", "--data", d} }, "--listen"},
		{"id just past the range", func(_ *testing.T, d string) []string { return []string{"--id", "2147483648", "--data", d} }, "--id must be an integer from 1 to"},
		{"listen port not a number", func(_ *testing.T, d string) []string { return []string{"--listen", "localhost:abc", "--data", d} }, "--listen port"},
		{"batch of no entries", func(_ *testing.T, d string) []string { return []string{"--max-batch-entries", "0", "--data", d} }, "--max-batch-entries must be an integer from 1 to 65536"},
		{"batch of too many entries", func(_ *testing.T, d string) []string { return []string{"--max-batch-entries", "65537", "--data", d} }, "--max-batch-entries"},
		{"negative memory limit", func(_ *testing.T, d string) []string { return []string{"--memory-limit=-1", "--data", d} }, "--memory-limit must not be negative"},
		{"batch body too large", func(_ *testing.T, d string) []string { return []string{"--max-batch-bytes", "67108865", "--data", d} }, "--max-batch-bytes must be an integer from 1 to 67108864"},
		{"peers missing own id", func(_ *testing.T, d string) []string {
			return []string{"--id", "3", "--peers", "1=http://127.0.0.1:7071,2=http://127.0.0.1:7072", "--data", d}
		}, "own id 3"},
		{"peers missing default id", func(_ *testing.T, d string) []string {
			return []string{"--peers", "2=http://127.0.0.1:7072", "--data", d}
		}, "own id 1"},
		{"duplicate ids", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:7071,2=http://127.0.0.1:7072,1=http://127.0.0.1:7073", "--data", d}
		}, "id 1 twice"},
		{"duplicate ids spelled differently", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:7071,01=http://127.0.0.1:7073", "--data", d}
		}, "id 1 twice"},
		{"entry without url", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:7071,2", "--data", d}
		}, "not id=url"},
		{"empty entry", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:7071,", "--data", d}
		}, "not id=url"},
		{"entry id not a number", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:7071,two=http://127.0.0.1:7072", "--data", d}
		}, "positive integer"},
		{"entry id zero", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:7071,0=http://127.0.0.1:7072", "--data", d}
		}, "positive integer"},
		{"url without scheme", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=127.0.0.1:7071", "--data", d}
		}, "http://host:port"},
		{"url with other scheme", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=ftp://127.0.0.1:7071", "--data", d}
		}, "http://host:port"},
		{"url without host", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://", "--data", d}
		}, "http://host:port"},
		{"url that does not parse", func(_ *testing.T, d string) []string {
			return []string{"--peers", "1=http://127.0.0.1:port", "--data", d}
		}, "http://host:port"},
		{"data under a regular file", func(t *testing.T, d string) []string {
			file := filepath.Join(d, "file")
			if err := os.WriteFile(file, nil, 0o640); err != nil {
				t.Fatal(err)
			}
			return []string{"--data", filepath.Join(file, "data")}
		}, "--data"},
		{"data is a regular file", func(t *testing.T, d string) []string {
			file := filepath.Join(d, "file")
			if err := os.WriteFile(file, nil, 0o640); err != nil {
				t.Fatal(err)
			}
			return []string{"--data", file}
		}, "--data"},
	}
	// A cancelled context makes Main return at once should a case get
	// past the flags by mistake, instead of serving.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A case's own --listen comes later and wins.
			args := append([]string{"--listen=127.0.0.1:0"}, tc.args(t, t.TempDir())...)
			expectUsageError(ctx, t, args, tc.want)
		})
	}
}

// expectUsageError runs Main with args and wants exit status 2 and exactly
// one line on stderr, "paxoslog: ..." naming want.
func expectUsageError(ctx context.Context, t *testing.T, args []string, want string) {
	t.Helper()
	var stderr bytes.Buffer
	code := Main(ctx, args, &stderr)
	out := stderr.String()
	if code != 2 {
		t.Errorf("Main(%q) = %d, want 2; stderr:\n%s", args, code, out)
	}
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Errorf("Main(%q) wrote %q, want exactly one line", args, out)
	}
	if !strings.HasPrefix(out, "paxoslog: ") || !strings.Contains(out, want) {
		t.Errorf("Main(%q) wrote %q, want a line naming %q", args, out, want)
	}
}

// TestParseFlagsDefaults runs with no flags at all from a scratch working
// directory (t.Chdir: not parallel).
func TestParseFlagsDefaults(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PAXOSLOG_CLUSTER_KEY", "")
	var stderr bytes.Buffer
	o, err := parseFlags(nil, &stderr)
	if err != nil {
		t.Fatalf("parseFlags(): %v", err)
	}
	if stderr.Len() != 0 {
		t.Errorf("parseFlags() wrote %q", stderr.String())
	}
	if o.node.ID != 1 {
		t.Errorf("id = %d, want 1", o.node.ID)
	}
	if o.listen != "127.0.0.1:7070" {
		t.Errorf("listen = %q, want 127.0.0.1:7070", o.listen)
	}
	if want := []NodeID{1}; !reflect.DeepEqual(o.node.Members, want) {
		t.Errorf("members = %v, want %v", o.node.Members, want)
	}
	if want := map[NodeID]string{1: "http://127.0.0.1:7070"}; !reflect.DeepEqual(o.peers, want) {
		t.Errorf("peers = %v, want %v", o.peers, want)
	}
	if want := filepath.Join("paxoslog-data", "1"); o.node.DataDir != want {
		t.Errorf("data = %q, want %q", o.node.DataDir, want)
	}
	checkDataDirLeftClean(t, o.node.DataDir)
	if o.clusterKey != "" {
		t.Errorf("cluster key = %q, want none", o.clusterKey)
	}
}

// TestParseFlagsMemoryLimit: the default limit follows --max-batch-bytes,
// --memory-limit wins over GOMEMLIMIT, and GOMEMLIMIT over the default.
func TestParseFlagsMemoryLimit(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, c := range []struct {
		env  string
		args []string
		want int64
	}{
		{"", nil, 90 << 20},
		{"", []string{"--max-batch-bytes", "67108864"}, memoryBase + 128<<20},
		{"", []string{"--memory-limit", "0"}, 0},
		{"", []string{"--memory-limit", "300000000"}, 300000000},
		{"200MiB", nil, -1},
		{"200MiB", []string{"--memory-limit", "0"}, 0},
	} {
		t.Setenv("GOMEMLIMIT", c.env)
		o, err := parseFlags(c.args, io.Discard)
		if err != nil {
			t.Fatalf("GOMEMLIMIT=%q %v: %v", c.env, c.args, err)
		}
		if o.memLimit != c.want {
			t.Errorf("GOMEMLIMIT=%q %v: memory limit %d, want %d", c.env, c.args, o.memLimit, c.want)
		}
	}
}

// checkDataDirLeftClean checks that dir exists and that parseFlags's
// writability probe did not stay behind.
func checkDataDirLeftClean(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("data dir %s: %v", dir, err)
	}
	for _, e := range ents {
		t.Errorf("data dir %s holds %s after parseFlags", dir, e.Name())
	}
}

func TestParseFlagsCluster(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "node", "2")
	args := []string{
		"--id", "2",
		"--listen", "0.0.0.0:9002",
		"--peers", "3=https://c.example:443, 1=http://10.0.0.1:9001,2=http://proxy.example:80/",
		"--data", data,
		"--cluster-key", "secret",
	}
	var stderr bytes.Buffer
	o, err := parseFlags(args, &stderr)
	if err != nil {
		t.Fatalf("parseFlags(%q): %v", args, err)
	}
	if o.node.ID != 2 || o.listen != "0.0.0.0:9002" || o.clusterKey != "secret" {
		t.Errorf("id, listen, key = %d, %q, %q", o.node.ID, o.listen, o.clusterKey)
	}
	if want := []NodeID{1, 2, 3}; !reflect.DeepEqual(o.node.Members, want) {
		t.Errorf("members = %v, want %v", o.node.Members, want)
	}
	// A peer's URL may differ from the address it listens on (a proxy).
	want := map[NodeID]string{1: "http://10.0.0.1:9001", 2: "http://proxy.example:80", 3: "https://c.example:443"}
	if !reflect.DeepEqual(o.peers, want) {
		t.Errorf("peers = %v, want %v", o.peers, want)
	}
	if o.node.DataDir != data {
		t.Errorf("data = %q, want %q", o.node.DataDir, data)
	}
	checkDataDirLeftClean(t, data)
}

// TestParseFlagsClusterKeyEnv sets the environment: not parallel.
func TestParseFlagsClusterKeyEnv(t *testing.T) {
	t.Setenv("PAXOSLOG_CLUSTER_KEY", "from-env")
	data := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", data}, "from-env"},
		{[]string{"--data", data, "--cluster-key", "from-flag"}, "from-flag"},
	} {
		o, err := parseFlags(tc.args, new(bytes.Buffer))
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", tc.args, err)
		}
		if o.clusterKey != tc.want {
			t.Errorf("parseFlags(%q): cluster key = %q, want %q", tc.args, o.clusterKey, tc.want)
		}
	}
}

func TestMainHelp(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	if code := Main(context.Background(), []string{"--help"}, &stderr); code != 0 {
		t.Errorf("Main(--help) = %d, want 0", code)
	}
	for _, flag := range []string{"-id", "-listen", "-peers", "-data", "-cluster-key"} {
		if !strings.Contains(stderr.String(), flag) {
			t.Errorf("--help does not mention %s:\n%s", flag, stderr.String())
		}
	}
}
