package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// tls.go: --tls-cert, --tls-key and --tls-ca, loaded once at start into
// the server's and the peer transport's tls.Config.
//
// With a certificate and key the node serves HTTPS. With a CA as well,
// peers verify each other (mutual TLS): the server asks every client for
// a certificate signed by the CA, client API endpoints still serve
// clients without one, and /paxos/* refuses them (requirePeerCert in
// http.go). The cluster key is checked in addition.

// tlsSetup is this node's TLS material as loaded at start. It is never
// changed after loadTLS returns; a nil *tlsSetup means plain HTTP.
type tlsSetup struct {
	cert tls.Certificate
	// cas verifies peers' certificates, both ways; nil without --tls-ca:
	// then peers' servers are checked against the system roots and no
	// client certificates are asked for.
	cas *x509.CertPool
}

// loadTLS reads and checks the --tls-* files. Every error is a usage
// error naming the flag. It returns nil, nil when no file is given.
func loadTLS(certFile, keyFile, caFile string) (*tlsSetup, error) {
	switch {
	case certFile == "" && keyFile == "" && caFile == "":
		return nil, nil
	case certFile == "" && keyFile == "":
		return nil, usagef("--tls-ca needs --tls-cert and --tls-key: this node's own certificate, signed by that CA")
	case keyFile == "":
		return nil, usagef("--tls-cert needs --tls-key: give both or neither")
	case certFile == "":
		return nil, usagef("--tls-key needs --tls-cert: give both or neither")
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	leaf := cert.Leaf
	if leaf == nil { // X509KeyPair fills it in since Go 1.23; be safe
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, usagef("--tls-cert %s: %s", certFile, oneLine(err))
		}
	}
	if time.Now().After(leaf.NotAfter) {
		return nil, usagef("--tls-cert %s: expired on %s", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	s := &tlsSetup{cert: cert}
	if caFile == "" {
		return s, nil
	}
	if s.cas, err = loadCAPool(caFile); err != nil {
		return nil, err
	}
	// Peers check this certificate both as a server's and as a client's:
	// find out now rather than at every handshake.
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, use := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: s.cas, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{use}}
		if _, err := leaf.Verify(opts); err != nil {
			return nil, usagef("--tls-cert %s: peers would refuse it: %s", certFile, oneLine(err))
		}
	}
	return s, nil
}

// loadKeyPair reads --tls-cert and --tls-key (the node's and the
// client's flags alike).
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := readTLSFile("--tls-cert", certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readTLSFile("--tls-key", keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, usagef("--tls-cert %s, --tls-key %s: not a certificate and its private key: %s", certFile, keyFile, oneLine(err))
	}
	return cert, nil
}

// loadCAPool reads --tls-ca.
func loadCAPool(caFile string) (*x509.CertPool, error) {
	caPEM, err := readTLSFile("--tls-ca", caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, usagef("--tls-ca %s: no PEM certificate in it", caFile)
	}
	return pool, nil
}

// readTLSFile reads one of the --tls-* files.
func readTLSFile(flagName, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, usagef("%s %s: cannot read it: %v", flagName, file, err)
	}
	return b, nil
}

// oneLine keeps an error message to one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// serverConfig is the listener's: this node's certificate and, with a
// CA, a request for the client's certificate, verified when given.
func (s *tlsSetup) serverConfig() *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{s.cert}}
	if s.cas != nil {
		c.ClientAuth = tls.VerifyClientCertIfGiven
		c.ClientCAs = s.cas
	}
	return c
}

// clientConfig is the peer transport's: with a CA, peers' servers are
// verified against it and this node shows its own certificate; without
// one, the system roots verify peers.
func (s *tlsSetup) clientConfig() *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.cas != nil {
		c.RootCAs = s.cas
		c.Certificates = []tls.Certificate{s.cert}
	}
	return c
}

// mutual reports whether peers must show a certificate signed by the CA.
func (s *tlsSetup) mutual() bool { return s != nil && s.cas != nil }

// String describes the mode for the start-up log line.
func (s *tlsSetup) String() string {
	switch {
	case s == nil:
		return "off"
	case s.cas == nil:
		return "https"
	default:
		return "mutual"
	}
}

// checkPeerSchemes: with TLS every peer is reached over https://. (Without
// TLS an https:// peer is fine: a proxy with a publicly valid certificate
// may sit in front of it.)
func checkPeerSchemes(peers map[NodeID]string, s *tlsSetup) error {
	if s == nil {
		return nil
	}
	for _, id := range slices.Sorted(maps.Keys(peers)) {
		if u := peers[id]; !strings.HasPrefix(u, "https://") {
			return usagef("--peers entry %d=%s: with --tls-cert every peer url must be https://", id, u)
		}
	}
	return nil
}
