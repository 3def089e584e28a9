package console_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/snapscan/snapscan/appliance/console"
	"github.com/snapscan/snapscan/internal/httpx"
)

// A console in front of an API: the pages under /console/, the API behind
// Authenticate, which takes a bearer token or a browser's session.
func ExampleConsole_Authenticate() {
	tokens := httpx.NewTokens("an-api-token-0123456789")
	c := console.New(console.Config{Tokens: tokens})
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "the API") })
	mux := http.NewServeMux()
	mux.Handle("/console/", c.Handler())
	mux.Handle("/v1/", c.Authenticate(tokens, httpx.RequireBearer(tokens, api, httpx.BearerOptions{}), api))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, auth := range []string{"", "Bearer an-api-token-0123456789"} {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/scans", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, _ := http.DefaultClient.Do(req)
		resp.Body.Close()
		fmt.Println(resp.StatusCode)
	}
	// Output:
	// 401
	// 200
}
