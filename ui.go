package main

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/labstack/echo/v4"
)

// ui.go: the status page at GET /, three files embedded in the binary
// (ui/), with no build step and nothing fetched from elsewhere. The page
// reads the same endpoints any client can (/v1/status, /v1/members,
// /metrics and the SSE feed), from the node that served it.

//go:embed ui
var uiFiles embed.FS

// uiCSP keeps the page to its own origin: its scripts, styles and
// requests all come from this node, and entry values are only ever set
// as text, never as markup.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// addUI registers GET / and GET /ui/*.
func addUI(e *echo.Echo) {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the directory is part of the binary
	}
	files := http.FileServer(http.FS(sub))
	serve := func(name string) echo.HandlerFunc {
		return func(c echo.Context) error {
			h := c.Response().Header()
			h.Set("Content-Security-Policy", uiCSP)
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Cache-Control", "no-cache")
			r := c.Request().Clone(c.Request().Context())
			r.URL.Path = name
			files.ServeHTTP(c.Response(), r)
			return nil
		}
	}
	methods := []string{http.MethodGet, http.MethodHead}
	e.Match(methods, "/", serve("/"))
	for _, name := range []string{"app.js", "style.css"} {
		e.Match(methods, "/ui/"+name, serve("/"+name))
	}
}
