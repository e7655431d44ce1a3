package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// tls_test.go: --tls-cert, --tls-key and --tls-ca. Every certificate is
// made here, by a throwaway CA, valid for an hour for 127.0.0.1 and
// localhost.

// testCA signs test certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate as PEM
}

func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: testSerial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name+".pem")
	writePEM(t, file, "CERTIFICATE", der)
	return &testCA{cert: cert, key: key, file: file}
}

func testSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writePEM(t testing.TB, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// certSpec varies an issued certificate; the zero value is a good node
// certificate.
type certSpec struct {
	notAfter time.Time          // default: an hour from now
	usages   []x509.ExtKeyUsage // default: server and client
}

// issue makes a certificate for 127.0.0.1 and localhost and writes it and
// its key as PEM files in dir.
func (ca *testCA) issue(t testing.TB, dir, name string, spec certSpec) (certFile, keyFile string) {
	t.Helper()
	if spec.notAfter.IsZero() {
		spec.notAfter = time.Now().Add(time.Hour)
	}
	if spec.usages == nil {
		spec.usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: testSerial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: spec.notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: spec.usages,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// pool is a CertPool of the CA alone.
func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// httpsClient trusts ca and shows the certificate in certFile, if any.
func httpsClient(t testing.TB, ca *testCA, certFile, keyFile string) *http.Client {
	t.Helper()
	conf := &tls.Config{RootCAs: ca.pool(), MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{TLSClientConfig: conf}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// tlsCluster is startHTTPCluster (e2e_test.go) over mutual TLS: each node
// has its own certificate from one CA, loaded by loadTLS as --tls-cert,
// --tls-key and --tls-ca would be.
type tlsCluster struct {
	ca   *testCA
	dir  string // the certificates
	urls map[NodeID]string
	// client trusts the CA and shows no certificate: a client of /v1.
	client *http.Client
	trs    map[NodeID]*httpTransport
}

func startTLSCluster(t *testing.T, size int, key string) *tlsCluster {
	t.Helper()
	dir := t.TempDir()
	tc := &tlsCluster{ca: newTestCA(t, dir, "cluster-ca"), dir: dir, urls: map[NodeID]string{}, trs: map[NodeID]*httpTransport{}}
	tc.client = httpsClient(t, tc.ca, "", "")
	lns, members := loopbackListeners(t, size, "https", tc.urls)
	var wg sync.WaitGroup
	var stops []func()
	for _, id := range members {
		certFile, keyFile := tc.ca.issue(t, dir, fmt.Sprintf("node%d", id), certSpec{})
		setup, err := loadTLS(certFile, keyFile, tc.ca.file)
		if err != nil {
			t.Fatal(err)
		}
		if !setup.mutual() {
			t.Fatalf("loadTLS with a CA: mode %s, want mutual", setup)
		}
		cfg := Config{ID: id, Members: members, DataDir: filepath.Join(dir, fmt.Sprint(id)),
			HeartbeatInterval: 20 * time.Millisecond, ElectionTimeout: 150 * time.Millisecond, RequestTimeout: 5 * time.Second}
		tr := newPeerTransport(tc.urls, key, setup.clientConfig())
		t.Cleanup(tr.closeIdle)
		tc.trs[id] = tr
		n, err := NewNode(cfg, tr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{
			Handler:   newHandler(n, handlerOptions{ClusterKey: key, SSEHeartbeat: 50 * time.Millisecond, PeerCerts: true}),
			TLSConfig: setup.serverConfig(),
			// Refused handshakes are expected here; keep them quiet.
			ErrorLog: log.New(io.Discard, "", 0),
		}
		ctx, cancel := context.WithCancel(context.Background())
		wg.Add(2)
		go func() { defer wg.Done(); srv.ServeTLS(lns[id], "", "") }()
		go func() { defer wg.Done(); n.Run(ctx) }()
		stops = append(stops, func() { srv.Close(); cancel() })
		t.Cleanup(func() { n.Close() }) // runs after the stop below
	}
	t.Cleanup(func() {
		for _, stop := range stops {
			stop()
		}
		wg.Wait()
	})
	return tc
}

// TestTLSClusterMutual: three nodes whose peers talk mutual TLS; appends
// through every node succeed and every node reads the same log.
func TestTLSClusterMutual(t *testing.T) {
	const key = "s3cret"
	tc := startTLSCluster(t, 3, key)
	want := map[int]string{}
	for round := 0; round < 3; round++ {
		for id := NodeID(1); id <= 3; id++ {
			data := fmt.Sprintf(`{"node":%d,"round":%d}`, id, round)
			r := mustSend(t, tc.client, "POST", tc.urls[id]+"/v1/log", data, nil)
			if r.code != http.StatusCreated {
				t.Fatalf("append via %d: %d %s", id, r.code, r.raw)
			}
			want[int(r.body["index"].(float64))] = data
		}
	}
	if len(want) != 9 {
		t.Fatalf("9 appends got %d distinct indices: %v", len(want), want)
	}
	checkStreamsOnly(t, tc.trs) // peer streams work over mutual TLS
	var first string
	for id := NodeID(1); id <= 3; id++ {
		r := mustSend(t, tc.client, "GET", tc.urls[id]+"/v1/log?from=1&limit=1000", "", nil)
		if r.code != http.StatusOK {
			t.Fatalf("range via %d: %d %s", id, r.code, r.raw)
		}
		var got struct {
			Entries []struct {
				Index int             `json:"index"`
				Data  json.RawMessage `json:"data"`
			} `json:"entries"`
			Last int `json:"last"`
		}
		if err := json.Unmarshal([]byte(r.raw), &got); err != nil {
			t.Fatalf("range via %d: %v in %s", id, err, r.raw)
		}
		if len(got.Entries) != 9 || got.Last != 9 {
			t.Fatalf("node %d holds %d entries, last %d, want 9: %s", id, len(got.Entries), got.Last, r.raw)
		}
		for _, e := range got.Entries {
			if string(e.Data) != want[e.Index] {
				t.Fatalf("node %d index %d: %s, want %s", id, e.Index, e.Data, want[e.Index])
			}
		}
		if first == "" {
			first = r.raw
		} else if r.raw != first {
			t.Fatalf("node %d reads\n%s\nnode 1 reads\n%s", id, r.raw, first)
		}
		st := mustSend(t, tc.client, "GET", tc.urls[id]+"/v1/status", "", nil)
		if st.code != http.StatusOK || st.body["leader"].(float64) == 0 {
			t.Fatalf("status via %d: %d %s", id, st.code, st.raw)
		}
	}
}

// TestTLSPeerRequests: with --tls-ca, /paxos/* takes only clients whose
// certificate the CA signed, and the cluster key as well; /v1 takes
// clients without a certificate.
func TestTLSPeerRequests(t *testing.T) {
	const key = "s3cret"
	tc := startTLSCluster(t, 3, key)
	u := tc.urls[2]
	withKey := map[string]string{"Authorization": "Bearer " + key}
	// A harmless peer message: a learn of nothing.
	const learn = `{"b":{"r":0,"n":0},"commit":0}`

	t.Run("certificate from another CA", func(t *testing.T) {
		other := newTestCA(t, tc.dir, "other-ca")
		certFile, keyFile := other.issue(t, tc.dir, "intruder", certSpec{})
		foreign, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		// Both clients trust the cluster's CA, so only the server can say
		// no. The first holds its certificate back, as Go's client does
		// when the server names other CAs: a request without one, 401.
		polite := httpsClient(t, tc.ca, certFile, keyFile)
		r := mustSend(t, polite, "POST", u+"/paxos/learn", learn, withKey)
		if r.code != http.StatusUnauthorized {
			t.Errorf("POST /paxos/learn with a foreign certificate held back: %d %s, want 401", r.code, r.raw)
		}
		// The second shows it anyway: the handshake fails.
		pushy := httpsClient(t, tc.ca, "", "")
		pushy.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &foreign, nil
		}
		for _, req := range [][2]string{{"POST", "/paxos/learn"}, {"GET", "/v1/status"}} {
			r, err := send(t, pushy, req[0], u+req[1], learn, withKey)
			if err == nil {
				t.Errorf("%s %s showing a foreign certificate: %d %s, want a failed handshake", req[0], req[1], r.code, r.raw)
			}
		}
		// The same through the peer transport a node would use.
		setup, err := loadTLS(certFile, keyFile, other.file)
		if err != nil {
			t.Fatal(err)
		}
		conf := setup.clientConfig()
		conf.RootCAs = tc.ca.pool()
		if _, err := newPeerTransport(tc.urls, key, conf).Call(context.Background(), 2, methodLearn, []byte(learn)); err == nil {
			t.Errorf("peer transport with a foreign certificate: no error")
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		for _, path := range []string{"/paxos/learn", "/paxos/prepare", "/paxos/accept"} {
			r := mustSend(t, tc.client, "POST", u+path, learn, withKey)
			if r.code != http.StatusUnauthorized || !strings.Contains(fmt.Sprint(r.body["error"]), "client certificate signed by --tls-ca") {
				t.Errorf("POST %s without a certificate: %d %s, want 401 naming the certificate", path, r.code, r.raw)
			}
		}
		upgrade := map[string]string{peerKeyHeader: withKey[peerKeyHeader], "Connection": "Upgrade", "Upgrade": peerStreamProto}
		if r := mustSend(t, tc.client, "GET", u+"/paxos/stream", "", upgrade); r.code != http.StatusUnauthorized {
			t.Errorf("GET /paxos/stream without a certificate: %d %s, want 401", r.code, r.raw)
		}
		for _, path := range []string{"/v1/status", "/healthz", "/metrics", "/v1/log?stale=true"} {
			if r := mustSend(t, tc.client, "GET", u+path, "", nil); r.code != http.StatusOK {
				t.Errorf("GET %s without a certificate: %d %s, want 200", path, r.code, r.raw)
			}
		}
		if r := mustSend(t, tc.client, "POST", u+"/v1/log", `"no cert"`, nil); r.code != http.StatusCreated {
			t.Errorf("append without a certificate: %d %s, want 201", r.code, r.raw)
		}
	})

	t.Run("plain HTTP", func(t *testing.T) {
		r, err := send(t, http.DefaultClient, "GET", "http://"+strings.TrimPrefix(u, "https://")+"/v1/status", "", nil)
		if err == nil && r.code == http.StatusOK {
			t.Errorf("plain HTTP to a TLS node: %d %s", r.code, r.raw)
		}
	})

	t.Run("certificate without the cluster key", func(t *testing.T) {
		certFile, keyFile := tc.ca.issue(t, tc.dir, "operator", certSpec{usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		c := httpsClient(t, tc.ca, certFile, keyFile)
		for _, h := range []map[string]string{nil, {"Authorization": "Bearer nope"}, {"Authorization": key}} {
			r := mustSend(t, c, "POST", u+"/paxos/learn", learn, h)
			if r.code != http.StatusUnauthorized || r.body["error"] == nil {
				t.Errorf("POST /paxos/learn with a good certificate and header %v: %d %s, want 401", h, r.code, r.raw)
			}
		}
		// Both: accepted.
		if r := mustSend(t, c, "POST", u+"/paxos/learn", learn, withKey); r.code != http.StatusOK {
			t.Errorf("POST /paxos/learn with certificate and key: %d %s, want 200", r.code, r.raw)
		}
	})

	// The refused requests changed nothing: every node still appends.
	for id := NodeID(1); id <= 3; id++ {
		if r := mustSend(t, tc.client, "POST", tc.urls[id]+"/v1/log", `"after"`, nil); r.code != http.StatusCreated {
			t.Fatalf("append via %d after refused peer requests: %d %s", id, r.code, r.raw)
		}
	}
}

// tlsFlagFiles are certificates for flag tests, made once per test.
type tlsFlagFiles struct {
	dir                  string
	ca, otherCA          *testCA
	cert, key            string // node1, signed by ca
	foreignCert, foreign string // signed by otherCA
	expiredCert, expired string // signed by ca, expired
	serverCert, server   string // signed by ca, server use only
	garbage              string // not PEM
}

func makeTLSFlagFiles(t *testing.T) *tlsFlagFiles {
	dir := t.TempDir()
	f := &tlsFlagFiles{dir: dir, ca: newTestCA(t, dir, "ca"), otherCA: newTestCA(t, dir, "other-ca")}
	f.cert, f.key = f.ca.issue(t, dir, "node1", certSpec{})
	f.foreignCert, f.foreign = f.otherCA.issue(t, dir, "foreign", certSpec{})
	f.expiredCert, f.expired = f.ca.issue(t, dir, "expired", certSpec{notAfter: time.Now().Add(-time.Minute)})
	f.serverCert, f.server = f.ca.issue(t, dir, "server-only", certSpec{usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	f.garbage = filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(f.garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestMainTLSBadFlags: bad --tls-* flags stop paxoslog at start with one
// line and exit status 2.
func TestMainTLSBadFlags(t *testing.T) {
	f := makeTLSFlagFiles(t)
	missing := filepath.Join(f.dir, "missing.pem")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--tls-cert", f.cert}, "--tls-cert needs --tls-key"},
		{"key without cert", []string{"--tls-key", f.key}, "--tls-key needs --tls-cert"},
		{"ca alone", []string{"--tls-ca", f.ca.file}, "--tls-ca needs --tls-cert and --tls-key"},
		{"ca and cert without key", []string{"--tls-cert", f.cert, "--tls-ca", f.ca.file}, "--tls-cert needs --tls-key"},
		{"cert missing", []string{"--tls-cert", missing, "--tls-key", f.key}, "--tls-cert " + missing + ": cannot read it"},
		{"key is a directory", []string{"--tls-cert", f.cert, "--tls-key", f.dir}, "--tls-key " + f.dir + ": cannot read it"},
		{"ca missing", []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", missing}, "--tls-ca " + missing + ": cannot read it"},
		{"cert not PEM", []string{"--tls-cert", f.garbage, "--tls-key", f.key}, "not a certificate and its private key"},
		{"key of another certificate", []string{"--tls-cert", f.cert, "--tls-key", f.foreign}, "not a certificate and its private key"},
		{"ca not PEM", []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.garbage}, "--tls-ca " + f.garbage + ": no PEM certificate"},
		{"ca is a private key", []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.key}, "no PEM certificate"},
		{"cert from another ca", []string{"--tls-cert", f.foreignCert, "--tls-key", f.foreign, "--tls-ca", f.ca.file}, "peers would refuse it"},
		{"cert for servers only", []string{"--tls-cert", f.serverCert, "--tls-key", f.server, "--tls-ca", f.ca.file}, "peers would refuse it"},
		{"cert expired", []string{"--tls-cert", f.expiredCert, "--tls-key", f.expired}, "expired on"},
		{"http peer with tls", []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.ca.file,
			"--peers", "1=https://127.0.0.1:7561,2=http://127.0.0.1:7562,3=https://127.0.0.1:7563"}, "--peers entry 2=http://127.0.0.1:7562: with --tls-cert every peer url must be https://"},
		{"own http url with tls", []string{"--tls-cert", f.cert, "--tls-key", f.key,
			"--peers", "1=http://127.0.0.1:7561"}, "every peer url must be https://"},
	}
	// A cancelled context makes Main return at once should a case get
	// past the flags by mistake.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--listen=127.0.0.1:0", "--data", t.TempDir()}, tc.args...)
			expectUsageError(ctx, t, args, tc.want)
		})
	}
}

// TestParseFlagsTLS: good --tls-* flags, and none at all.
func TestParseFlagsTLS(t *testing.T) {
	f := makeTLSFlagFiles(t)
	data := t.TempDir()
	parse := func(args ...string) *options {
		t.Helper()
		o, err := parseFlags(append([]string{"--data", data}, args...), io.Discard)
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", args, err)
		}
		return o
	}
	if o := parse(); o.tls != nil || o.peers[1] != "http://127.0.0.1:7070" {
		t.Errorf("no flags: tls %v, peers %v; want plain HTTP", o.tls, o.peers)
	}
	// Without TLS an https:// peer stays allowed (a proxy may serve it).
	if o := parse("--peers", "1=http://127.0.0.1:7070,2=https://proxy.example"); o.tls != nil {
		t.Errorf("https peer without TLS: tls %v", o.tls)
	}
	o := parse("--tls-cert", f.cert, "--tls-key", f.key, "--listen", "127.0.0.1:7561")
	if o.tls.String() != "https" || o.tls.mutual() || o.peers[1] != "https://127.0.0.1:7561" {
		t.Errorf("cert and key: tls %v, peers %v; want https and an https:// own url", o.tls, o.peers)
	}
	if c := o.tls.clientConfig(); c.RootCAs != nil || len(c.Certificates) != 0 || c.MinVersion != tls.VersionTLS12 {
		t.Errorf("cert and key: peer transport should use the system roots and no client certificate")
	}
	if s := o.tls.serverConfig(); s.ClientAuth != tls.NoClientCert || s.MinVersion != tls.VersionTLS12 {
		t.Errorf("cert and key: server config %+v", s)
	}
	o = parse("--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.ca.file,
		"--peers", "1=https://127.0.0.1:7561,2=https://localhost:7562")
	if !o.tls.mutual() {
		t.Errorf("with --tls-ca: tls %v, want mutual", o.tls)
	}
	if s := o.tls.serverConfig(); s.ClientAuth != tls.VerifyClientCertIfGiven || s.ClientCAs == nil {
		t.Errorf("with --tls-ca: server config asks %v", s.ClientAuth)
	}
	if c := o.tls.clientConfig(); c.RootCAs == nil || len(c.Certificates) != 1 {
		t.Errorf("with --tls-ca: peer transport lacks the CA or its certificate")
	}
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestMainTLSServes runs the real Main with --tls-cert, --tls-key and
// --tls-ca: it serves HTTPS, clients without a certificate use /v1, and
// /paxos wants a certificate and the key.
func TestMainTLSServes(t *testing.T) {
	f := makeTLSFlagFiles(t)
	const key = "k"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"--listen", "127.0.0.1:0", "--data", t.TempDir(), "--cluster-key", key,
			"--tls-cert", f.cert, "--tls-key", f.key, "--tls-ca", f.ca.file}, &stderr)
	}()
	listening := regexp.MustCompile(`listen=(127\.0\.0\.1:\d+) tls=mutual`)
	var addr string
	waitFor(t, 10*time.Second, "the serving line", func() bool {
		select {
		case code := <-done:
			t.Fatalf("Main returned %d: %s", code, stderr.String())
		default:
		}
		m := listening.FindStringSubmatch(stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	u := "https://" + addr
	client := httpsClient(t, f.ca, "", "")
	if r := mustSend(t, client, "POST", u+"/v1/log", `{"over":"tls"}`, nil); r.code != http.StatusCreated {
		t.Fatalf("append: %d %s", r.code, r.raw)
	}
	if r := mustSend(t, client, "GET", u+"/v1/log/1", "", nil); r.raw != `{"index":1,"data":{"over":"tls"}}` {
		t.Fatalf("read: %d %s", r.code, r.raw)
	}
	const learn = `{"b":{"r":0,"n":0},"commit":0}`
	withKey := map[string]string{"Authorization": "Bearer " + key}
	if r := mustSend(t, client, "POST", u+"/paxos/learn", learn, withKey); r.code != http.StatusUnauthorized {
		t.Errorf("peer request without a certificate: %d %s, want 401", r.code, r.raw)
	}
	peer := httpsClient(t, f.ca, f.cert, f.key)
	if r := mustSend(t, peer, "POST", u+"/paxos/learn", learn, nil); r.code != http.StatusUnauthorized {
		t.Errorf("peer request without the key: %d %s, want 401", r.code, r.raw)
	}
	if r := mustSend(t, peer, "POST", u+"/paxos/learn", learn, withKey); r.code != http.StatusOK {
		t.Errorf("peer request with certificate and key: %d %s, want 200", r.code, r.raw)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("Main returned %d after cancel: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("Main did not return after cancel")
	}
}
