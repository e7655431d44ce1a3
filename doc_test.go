package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// doc_test.go: every example in README.md and docs/*.md that is written
// as a ```console block runs here, against live paxoslog processes, and
// what it prints must match what the page shows. So the docs cannot
// drift from the code.
//
// A console block is a series of "$ command" lines, each followed by the
// output it prints. A command continues on the next line while it ends
// in "\" or "|", or has an open quote. Matching:
//   - "…" inside a line stands for any text (a cluster id, a duration);
//     a line that is only "…" stands for any number of lines;
//   - for output that starts with "HTTP/", only the header lines the page
//     shows are compared (Date and Content-Length are left out);
//   - a stream (`curl -N`, `paxoslog tail` without --count) passes once
//     its output matches and stays so for a moment; then it is stopped.
//     Every other command must end by itself.
//
// The addresses in the pages are the ones the README uses: 7070 for a
// one-node log, 7071 and up for node 1 and up of a cluster. The test runs
// its nodes on free ports and translates both ways. `paxoslog` and
// `./paxoslog` are the binary under test.
//
// HTML comments set up what a block needs, invisible on the page:
//
//	<!-- doctest: start N [flags] -->   a fresh cluster of N nodes (each page begins with "start 1")
//	<!-- doctest: ports N -->           a fresh cluster of N nodes, none started yet
//	<!-- doctest: node I [flags] -->    start node I (again, or anew) with these flags (none: the last ones)
//	<!-- doctest: use NAME -->          switch to the cluster called NAME ("main" at first)
//	<!-- doctest: stop I -->            SIGTERM node I and wait for it to exit
//	<!-- doctest: run shell command --> run it; it must succeed; its output is not shown
//	<!-- doctest: skip reason -->       do not run the next block
//
// In a multi-node start node 1 has the shortest election timeout, so it
// is the first leader, as the pages assume.

// docPages are the pages whose examples run.
func docPages(t *testing.T) []string {
	pages, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"README.md"}, pages...)
}

func TestDocs(t *testing.T) {
	if testing.Short() {
		t.Skip("the doc examples start real processes")
	}
	for _, tool := range []string{"curl", "openssl", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the docs' examples need %s on PATH (Debian: apt-get install %s)", tool, tool)
		}
	}
	bin := buildBinary(t)
	binDir := t.TempDir()
	if err := os.Symlink(bin, filepath.Join(binDir, "paxoslog")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(binDir, ".curlrc"), []byte("silent\nshow-error\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, page := range docPages(t) {
		t.Run(strings.TrimSuffix(filepath.Base(page), ".md"), func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(page)
			if err != nil {
				t.Fatal(err)
			}
			s := &docScenario{t: t, bin: bin, binDir: binDir, page: page}
			s.use("main")
			t.Cleanup(func() {
				for _, c := range s.clusters {
					c.stopAll()
				}
			})
			s.runPage(string(src))
		})
	}
}

// docScenario is one page's run: its clusters, one of them current.
type docScenario struct {
	*docCluster
	clusters map[string]*docCluster
	t        *testing.T
	bin      string
	binDir   string
	page     string
	skipNext string
	status   int // the last command's exit status, for "echo $?"
}

// docCluster is one set of nodes and where they listen.
type docCluster struct {
	dir     string         // data and working directory
	ports   map[int]string // docs port (7070, 7071, ...) -> host:port
	mu      sync.Mutex
	procs   map[int]*docProc
	args    map[int][]string // each node's flags at its last start
	peers   string
	size    int // nodes in the last start
	started bool
}

// docProc is a running node; done closes when it has exited.
type docProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// use makes the cluster called name current, a new one if need be.
func (s *docScenario) use(name string) {
	if s.clusters == nil {
		s.clusters = map[string]*docCluster{}
	}
	c := s.clusters[name]
	if c == nil {
		c = &docCluster{ports: map[int]string{}, procs: map[int]*docProc{}, args: map[int][]string{}}
		s.clusters[name] = c
	}
	s.docCluster = c
}

var (
	docDirective = regexp.MustCompile(`(?s)<!--\s*doctest:(.*?)-->`)
	docFence     = regexp.MustCompile("(?m)^( *)```console\\n((?s:.*?))^ *```\\n")
)

// runPage walks the page's directives and console blocks in order.
func (s *docScenario) runPage(src string) {
	type item struct {
		at        int
		directive string
		block     string
		line      int
	}
	var items []item
	for _, m := range docDirective.FindAllStringSubmatchIndex(src, -1) {
		items = append(items, item{at: m[0], directive: strings.TrimSpace(src[m[2]:m[3]])})
	}
	for _, m := range docFence.FindAllStringSubmatchIndex(src, -1) {
		// A block inside a list item is indented like the fence.
		indent := src[m[2]:m[3]]
		block := strings.ReplaceAll("\n"+src[m[4]:m[5]], "\n"+indent, "\n")[1:]
		items = append(items, item{at: m[0], block: block, line: strings.Count(src[:m[0]], "\n") + 2})
	}
	// By position: directives and blocks interleave.
	slices.SortFunc(items, func(a, b item) int { return a.at - b.at })
	for _, it := range items {
		if it.directive != "" {
			for _, d := range strings.Split(it.directive, "\n") {
				if d = strings.TrimSpace(d); d != "" {
					s.directive(d)
				}
			}
			continue
		}
		if s.skipNext != "" {
			s.t.Logf("%s:%d: not run: %s", s.page, it.line, s.skipNext)
			s.skipNext = ""
			continue
		}
		if !s.started {
			s.start(1, nil)
		}
		for _, c := range parseConsole(it.block, it.line) {
			s.runCommand(c)
		}
	}
}

func (s *docScenario) directive(d string) {
	s.t.Helper()
	verb, rest, _ := strings.Cut(d, " ")
	rest = strings.TrimSpace(rest)
	switch verb {
	case "start":
		f := strings.Fields(rest)
		n := 1
		if len(f) > 0 {
			if _, err := fmt.Sscan(f[0], &n); err != nil || n < 1 {
				s.t.Fatalf("%s: doctest %q: start takes a node count first", s.page, d)
			}
			f = f[1:]
		}
		s.start(n, f)
	case "node":
		var id int
		f := strings.Fields(rest)
		if len(f) == 0 {
			s.t.Fatalf("%s: doctest %q: node takes an id", s.page, d)
		}
		if _, err := fmt.Sscan(f[0], &id); err != nil || id < 1 {
			s.t.Fatalf("%s: doctest %q: node takes an id first", s.page, d)
		}
		flags := s.translateArgs(f[1:])
		if len(flags) == 0 {
			flags = s.args[id]
		}
		s.startNode(id, flags)
	case "ports":
		var n int
		fmt.Sscan(rest, &n)
		s.stopAll()
		s.dir, s.ports, s.args = s.t.TempDir(), map[int]string{}, map[int][]string{}
		s.started, s.size = true, n
		for i, a := range freePorts(s.t, n) {
			s.ports[docPort(i+1, n)] = a
		}
	case "stop":
		var id int
		fmt.Sscan(rest, &id)
		s.stopNode(id)
	case "run":
		out, err := s.shell(s.translate(rest), 30*time.Second)
		if err != nil {
			s.t.Fatalf("%s: doctest run %q: %v\n%s", s.page, rest, err, out)
		}
	case "skip":
		s.skipNext = rest
	case "use":
		s.use(rest)
	default:
		s.t.Fatalf("%s: unknown doctest directive %q", s.page, d)
	}
}

// docPort is the port the pages use for node id of an n-node cluster.
func docPort(id, n int) int {
	if n == 1 && id == 1 {
		return 7070
	}
	return 7070 + id
}

// start replaces the cluster with a fresh one of n nodes.
func (s *docScenario) start(n int, flags []string) {
	s.t.Helper()
	s.stopAll()
	s.dir = s.t.TempDir()
	s.ports, s.args = map[int]string{}, map[int][]string{}
	s.started, s.size = true, n
	addrs := freePorts(s.t, n)
	var peers []string
	for i := 1; i <= n; i++ {
		s.ports[docPort(i, n)] = addrs[i-1]
		peers = append(peers, fmt.Sprintf("%d=http://%s", i, addrs[i-1]))
	}
	s.peers = ""
	if n > 1 {
		s.peers = strings.Join(peers, ",")
	}
	for i := 1; i <= n; i++ {
		args := []string{"--id", fmt.Sprint(i)}
		if n > 1 {
			args = append(args, "--peers", s.peers)
			timeout := "1500ms"
			if i == 1 {
				timeout = "150ms"
			}
			args = append(args, "--election-timeout", timeout)
		}
		s.startNode(i, append(args, s.translateArgs(flags)...))
	}
	first := "http://" + s.ports[docPort(1, n)]
	waitFor(s.t, 30*time.Second, "node 1 leading and every node serving and caught up", func() bool {
		var lead Status
		if getJSON(first+"/v1/status", &lead) != nil || !lead.IsLeader || lead.Cluster == "" {
			return false
		}
		for _, p := range lead.Peers {
			if p.Lag != 0 || p.Applied == 0 {
				return false
			}
		}
		for i := 1; i <= n; i++ {
			var st Status
			if getJSON("http://"+s.ports[docPort(i, n)]+"/v1/status", &st) != nil ||
				st.State != "serving" || st.Leader != 1 || st.Applied != lead.Commit {
				return false
			}
		}
		return true
	})
}

// startNode starts node id with flags (its --listen and --data are
// added unless given).
func (s *docScenario) startNode(id int, flags []string) {
	s.t.Helper()
	s.stopNode(id)
	s.args[id] = flags
	port := 7070 + id
	if id <= s.size {
		port = docPort(id, s.size)
	}
	if _, ok := s.ports[port]; !ok {
		s.ports[port] = freePorts(s.t, 1)[0]
	}
	args := []string{"--listen", s.ports[port], "--data", filepath.Join(s.dir, fmt.Sprint(id))}
	if !hasFlag(flags, "--id") {
		args = append(args, "--id", fmt.Sprint(id))
	}
	args = append(args, flags...)
	logf, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("node%d.log", id)))
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // not past a killed test
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	p := &docProc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	s.mu.Lock()
	s.procs[id] = p
	s.mu.Unlock()
	url, client := "http://"+s.ports[port], http.DefaultClient
	if hasFlag(flags, "--tls-cert") {
		// Only to see that it listens: the pages' examples check the
		// certificates.
		url = "https://" + s.ports[port]
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	}
	waitFor(s.t, 20*time.Second, fmt.Sprintf("node %d answering", id), func() bool {
		select {
		case <-p.done:
			log, _ := os.ReadFile(logf.Name())
			s.t.Fatalf("%s: node %d %v exited: %s\n%s", s.page, id, args, cmd.ProcessState, log)
		default:
		}
		r, err := client.Get(url + "/healthz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	})
}

func hasFlag(flags []string, name string) bool {
	for _, f := range flags {
		if f == name || strings.HasPrefix(f, name+"=") {
			return true
		}
	}
	return false
}

func (s *docCluster) stopNode(id int) {
	s.mu.Lock()
	p := s.procs[id]
	delete(s.procs, id)
	s.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (s *docCluster) stopAll() {
	s.mu.Lock()
	var ids []int
	for id := range s.procs {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.stopNode(id)
	}
}

var docAddr = regexp.MustCompile(`(localhost|127\.0\.0\.1):(70[7-9]\d)\b`)

// translate turns the pages' addresses into the test's. An address no
// node has yet (a member that is added but never started) gets a free
// port of its own, where nothing listens: nothing ever goes to the
// pages' real ports.
func (s *docScenario) translate(cmd string) string {
	return docAddr.ReplaceAllStringFunc(cmd, func(m string) string {
		var port int
		fmt.Sscan(m[strings.LastIndexByte(m, ':')+1:], &port)
		if _, ok := s.ports[port]; !ok {
			s.ports[port] = freePorts(s.t, 1)[0]
		}
		return s.ports[port]
	})
}

func (s *docScenario) translateArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = s.translate(a)
	}
	return out
}

// untranslate turns the test's addresses in output back into the pages'.
func (s *docScenario) untranslate(out string) string {
	for port, a := range s.ports {
		_, p, _ := strings.Cut(a, ":")
		out = strings.ReplaceAll(out, a, fmt.Sprintf("127.0.0.1:%d", port))
		out = strings.ReplaceAll(out, "localhost:"+p, fmt.Sprintf("127.0.0.1:%d", port))
	}
	return out
}

// shellCmd prepares `sh -c cmd` in the scenario's directory, with the
// binary on PATH and the CLI aimed at node 1.
func (s *docScenario) shellCmd(cmd string) *exec.Cmd {
	c := exec.Command("sh", "-c", cmd)
	c.Dir = s.dir
	ep := s.ports[7070]
	if ep == "" {
		ep = s.ports[7071]
	}
	// CURL_HOME's .curlrc keeps curl's progress meter off, as on a
	// terminal.
	c.Env = append(os.Environ(), "PATH="+s.binDir+":"+os.Getenv("PATH"), "PAXOSLOG_ENDPOINTS=http://"+ep, "PAXOSLOG_CLUSTER_KEY=",
		"CURL_HOME="+s.binDir)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if _, err := os.Lstat(filepath.Join(s.dir, "paxoslog")); err != nil {
		os.Symlink(s.bin, filepath.Join(s.dir, "paxoslog"))
	}
	return c
}

// shell runs cmd to its end.
func (s *docScenario) shell(cmd string, limit time.Duration) (string, error) {
	c := s.shellCmd(cmd)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		return "", err
	}
	timer := time.AfterFunc(limit, func() { syscall.Kill(-c.Process.Pid, syscall.SIGKILL) })
	defer timer.Stop()
	err := c.Wait()
	return out.String(), err
}

// docCommand is one "$ command" of a block and the output shown for it.
type docCommand struct {
	line int
	cmd  string
	want []string
}

// parseConsole splits a console block into commands and their output.
func parseConsole(block string, line int) []docCommand {
	var out []docCommand
	lines := strings.Split(strings.TrimSuffix(block, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "$ ") {
			if len(out) > 0 {
				out[len(out)-1].want = append(out[len(out)-1].want, strings.TrimRight(l, " \t"))
			}
			continue
		}
		c := docCommand{line: line + i, cmd: strings.TrimPrefix(l, "$ ")}
		for continues(c.cmd) && i+1 < len(lines) {
			i++
			c.cmd += "\n" + lines[i]
		}
		out = append(out, c)
	}
	for i := range out { // the gap before the next command is not output
		for n := len(out[i].want); n > 0 && out[i].want[n-1] == ""; n-- {
			out[i].want = out[i].want[:n-1]
		}
	}
	return out
}

// continues says whether a command goes on on the next line: a trailing
// backslash or pipe, or an open quote.
func continues(cmd string) bool {
	t := strings.TrimRight(cmd, " ")
	if strings.HasSuffix(t, "\\") || strings.HasSuffix(t, "|") || strings.HasSuffix(t, "&&") {
		return true
	}
	var quote byte
	for i := 0; i < len(cmd); i++ {
		ch := cmd[i]
		switch {
		case quote == 0 && ch == '\\':
			i++
		case quote == 0 && (ch == '\'' || ch == '"'):
			quote = ch
		case quote == '"' && ch == '\\':
			i++
		case quote != 0 && ch == quote:
			quote = 0
		case quote == 0 && ch == '#' && (i == 0 || cmd[i-1] == ' '):
			return false // the rest is a comment
		}
	}
	return quote != 0
}

// runCommand runs one command and compares its output.
func (s *docScenario) runCommand(c docCommand) {
	s.t.Helper()
	if strings.HasSuffix(strings.TrimSpace(c.cmd), "&") {
		// It would outlive the test, on the pages' real ports.
		s.t.Fatalf("%s:%d: $ %s: start nodes with a doctest directive, not in the background", s.page, c.line, c.cmd)
	}
	cmd := s.shellCmd(fmt.Sprintf("(exit %d); %s", s.status, s.translate(c.cmd)))
	// One writer for both, comparable: os/exec gives the command one pipe,
	// so stdout and stderr interleave as they would on a terminal.
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	kill := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done }
	got := func() []string { return s.normalise(out.String(), c.want) }
	// Only a stream (a feed, a tail that does not stop by itself) is
	// stopped once it shows its output; every other command must end.
	stream := strings.Contains(c.cmd, "curl -N") || (strings.Contains(c.cmd, "paxoslog tail") && !strings.Contains(c.cmd, "--count"))
	deadline := time.After(15 * time.Second)
	var matchedSince time.Time
	for {
		select {
		case <-done:
			s.status = cmd.ProcessState.ExitCode()
			if g := got(); !docMatch(c.want, g) {
				s.t.Errorf("%s:%d: $ %s\ngot:\n%s\nwant:\n%s", s.page, c.line, c.cmd, strings.Join(g, "\n"), strings.Join(c.want, "\n"))
			}
			return
		case <-deadline:
			kill()
			what := "did not end within 15s"
			if stream {
				what = "still running after 15s without the output shown"
			}
			s.t.Errorf("%s:%d: $ %s\n%s; got:\n%s\nwant:\n%s", s.page, c.line, c.cmd, what, strings.Join(got(), "\n"), strings.Join(c.want, "\n"))
			return
		case <-time.After(50 * time.Millisecond):
			switch {
			case !stream:
			case !docMatch(c.want, got()):
				matchedSince = time.Time{}
			case matchedSince.IsZero():
				matchedSince = time.Now()
			case time.Since(matchedSince) > 500*time.Millisecond: // a stream that shows what it should
				kill()
				s.status = 0
				return
			}
		}
	}
}

// normalise splits output into lines in the pages' terms: their
// addresses, no carriage returns or trailing blanks, and for an HTTP
// response only the header lines that want shows.
func (s *docScenario) normalise(out string, want []string) []string {
	out = strings.ReplaceAll(s.untranslate(out), "\r", "")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if out == "" {
		lines = nil
	}
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " \t")
	}

	if len(want) == 0 || !strings.HasPrefix(want[0], "HTTP/") || len(lines) == 0 || !strings.HasPrefix(lines[0], "HTTP/") {
		return lines
	}
	shown := map[string]bool{}
	for _, w := range want[1:] {
		if w == "" {
			break
		}
		name, _, _ := strings.Cut(w, ":")
		shown[strings.ToLower(name)] = true
	}
	kept := []string{lines[0]}
	i := 1
	for ; i < len(lines) && lines[i] != ""; i++ {
		name, _, _ := strings.Cut(lines[i], ":")
		if shown[strings.ToLower(name)] {
			kept = append(kept, lines[i])
		}
	}
	return append(kept, lines[i:]...)
}

// docMatch matches output lines against the lines a page shows.
func docMatch(want, got []string) bool {
	if len(want) == 0 {
		return len(got) == 0
	}
	if want[0] == "…" {
		for i := 0; i <= len(got); i++ {
			if docMatch(want[1:], got[i:]) {
				return true
			}
		}
		return false
	}
	return len(got) > 0 && docLineMatch(want[0], got[0]) && docMatch(want[1:], got[1:])
}

// docColumns is a gap in an aligned table: its width depends on the
// addresses' lengths, which are not the pages'.
var docColumns = regexp.MustCompile(`  +`)

func docLineMatch(want, got string) bool {
	if strings.Contains(strings.TrimSpace(want), "  ") {
		want, got = docColumns.ReplaceAllString(want, " "), docColumns.ReplaceAllString(got, " ")
	}
	if !strings.Contains(want, "…") {
		return want == strings.TrimRight(got, " \t")
	}
	parts := strings.Split(want, "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile("^" + strings.Join(parts, ".*") + "$").MatchString(got)
}
