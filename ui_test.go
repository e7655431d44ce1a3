package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ui_test.go: the status page, over plain HTTP and in a real headless
// browser.

func TestStatusPageServes(t *testing.T) {
	t.Parallel()
	hc := startHTTPCluster(t, 1, "", nil)
	for _, c := range []struct{ path, ctype, has string }{
		{"/", "text/html; charset=utf-8", `<script src="/ui/app.js"`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "new EventSource("},
		{"/ui/style.css", "text/css; charset=utf-8", "#entries"},
	} {
		r := do(t, "GET", hc.urls[1]+c.path, "", nil)
		if r.code != 200 || r.header.Get("Content-Type") != c.ctype || !strings.Contains(r.raw, c.has) {
			t.Errorf("GET %s: %d %q, body has %q: %v", c.path, r.code, r.header.Get("Content-Type"), c.has, strings.Contains(r.raw, c.has))
		}
		if csp := r.header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q", c.path, csp)
		}
	}
	if r := do(t, "GET", hc.urls[1]+"/ui/missing.js", "", nil); r.code != http.StatusNotFound {
		t.Errorf("GET /ui/missing.js: %d, want 404", r.code)
	}
}

// browserPath finds a Chromium to drive: $PAXOSLOG_BROWSER, else one on
// PATH. Without one the browser test is skipped, unless
// PAXOSLOG_BROWSER_TEST=required (as .ci/run sets it), when it fails.
func browserPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PAXOSLOG_BROWSER"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("PAXOSLOG_BROWSER_TEST") == "required" {
		t.Fatal("no Chromium found (install Debian's chromium, or set PAXOSLOG_BROWSER) and PAXOSLOG_BROWSER_TEST=required")
	}
	t.Skip("no Chromium found: install Debian's chromium (or set PAXOSLOG_BROWSER) to run the browser test")
	return ""
}

// TestStatusPageInBrowser loads the status page of a three-node
// cluster's leader and of a follower in headless Chromium: both name the
// leader and list the three members, and an entry appended while the
// page is open shows up on it without a reload.
func TestStatusPageInBrowser(t *testing.T) {
	t.Parallel()
	exe := browserPath(t)
	seed := testSeed(t)
	hc := startHTTPCluster(t, 3, "", nil)
	var leader NodeID
	waitFor(t, 10*time.Second, "a leader", func() bool {
		for id, n := range hc.nodes {
			if n.Status().IsLeader {
				leader = id
				return true
			}
		}
		return false
	})
	follower := leader%3 + 1

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1000), chromedp.Flag("disable-quic", true))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel := context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()

	// text reads an element's text, "" while it is not there.
	text := func(sel string) string {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s, err := chromedp.Run(c, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			return ""
		}
		return s
	}
	check := func(id NodeID, wantLeader string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Navigate(hc.urls[id]+"/")); err != nil {
			t.Fatalf("opening node %d's page: %v", id, err)
		}
		waitFor(t, 20*time.Second, fmt.Sprintf("node %d's page naming leader %d", id, leader), func() bool {
			return text("#leader") == wantLeader
		})
		waitFor(t, 10*time.Second, "three members listed", func() bool {
			return strings.Contains(text("#member-3"), "3") && strings.Contains(text(fmt.Sprintf("#member-%d", leader)), "leader")
		})
	}
	check(leader, fmt.Sprintf("node %d (this one)", leader))
	if got := text("#conn"); got != "live" {
		t.Errorf("the page says %q, want live", got)
	}
	marker := fmt.Sprintf(`{"from":"the browser test","seed":%d}`, seed)
	r := do(t, "POST", hc.urls[follower]+"/v1/log", marker, nil)
	if r.code != http.StatusCreated {
		t.Fatalf("append: %d %s", r.code, r.raw)
	}
	waitFor(t, 20*time.Second, "the appended entry on the leader's page", func() bool {
		return strings.Contains(text("#entries"), marker)
	})
	if shot := os.Getenv("PAXOSLOG_SCREENSHOT"); shot != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	check(follower, fmt.Sprintf("node %d", leader))
	waitFor(t, 20*time.Second, "the entry on the follower's page", func() bool {
		return strings.Contains(text("#entries"), marker)
	})
}
