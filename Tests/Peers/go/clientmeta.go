package main

// Metadata that Workhorse and GitLab Shell send with their Gitaly calls (GITALY-WIRE.md §2).

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
)

// clientOptions are the identity and tracing flags common to the Shell-like and Workhorse-like clients.
type clientOptions struct {
	target        string
	storage       string
	correlationID string
	clientName    string
	traceFormat   string
	traceID       string
	parentSpanID  string
	userID        string
	username      string
	sessionID     string
	remoteIP      string
	tokenSecret   string
	glRepository  string
	stats         string
}

func (o *clientOptions) register(fs *flag.FlagSet, defaultClientName string) {
	fs.StringVar(&o.target, "target", "", "Gitaly address: unix:/abs/path or tcp://host:port")
	fs.StringVar(&o.storage, "storage", "default", "storage name of the repositories")
	fs.StringVar(&o.correlationID, "correlation-id", "", "correlation id (default: generated per request)")
	fs.StringVar(&o.clientName, "client-name", defaultClientName, "x-gitlab-client-name")
	fs.StringVar(&o.traceFormat, "trace-format", "traceparent", "trace header: traceparent, uber-trace-id or none")
	fs.StringVar(&o.traceID, "trace-id", "", "trace id, 32 hex digits (default: generated)")
	fs.StringVar(&o.parentSpanID, "parent-span-id", "", "caller's span id, 16 hex digits (default: generated)")
	fs.StringVar(&o.userID, "user-id", "42", "user_id")
	fs.StringVar(&o.username, "username", "tap-tester", "username")
	fs.StringVar(&o.sessionID, "session-id", "", "gitaly-session-id (sent when set)")
	fs.StringVar(&o.remoteIP, "remote-ip", "127.0.0.1", "remote_ip")
	fs.StringVar(&o.tokenSecret, "token-secret", "gitaly-tap-test-secret", "shared secret for the v2 authorization token")
	fs.StringVar(&o.glRepository, "gl-repository", "project-1", "gl_repository")
	fs.StringVar(&o.stats, "stats", "", "append one JSON line per sidechannel RPC (bytes moved) to this file")
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newCorrelationID makes a ULID-looking id (26 characters of Crockford base32) like LabKit's.
func newCorrelationID() string {
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	b := make([]byte, 26)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%32]
	}
	return string(b)
}

// authToken is Gitaly's v2 token: Bearer v2.<hex HMAC-SHA256(secret, unix_ts)>.<unix_ts>.
func authToken(secret string) string {
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	return "Bearer v2." + hex.EncodeToString(mac.Sum(nil)) + "." + ts
}

// outgoing builds the call metadata; traceID/parentSpanID may come from the incoming request.
func (o *clientOptions) outgoing(correlationID, traceID, parentSpanID string, extra ...string) metadata.MD {
	md := metadata.Pairs(
		"authorization", authToken(o.tokenSecret),
		"x-gitlab-correlation-id", correlationID,
		"x-gitlab-client-name", o.clientName,
		"user_id", o.userID,
		"username", o.username,
		"remote_ip", o.remoteIP,
	)
	if o.sessionID != "" {
		md.Set("gitaly-session-id", o.sessionID)
	}
	if traceID == "" {
		traceID = o.traceID
	}
	if traceID == "" {
		traceID = randomHex(16)
	}
	// The client's own span is the parent of Gitaly's.
	span := randomHex(8)
	switch o.traceFormat {
	case "traceparent":
		md.Set("traceparent", fmt.Sprintf("00-%s-%s-01", traceID, span))
	case "uber-trace-id":
		parent := parentSpanID
		if parent == "" {
			parent = o.parentSpanID
		}
		if parent == "" {
			parent = "0"
		}
		md.Set("uber-trace-id", fmt.Sprintf("%s:%s:%s:1", traceID, span, parent))
	}
	for i := 0; i+1 < len(extra); i += 2 {
		md.Set(extra[i], extra[i+1])
	}
	return md
}

// parseTraceparent returns the trace and span id of a W3C traceparent header ("" when invalid).
func parseTraceparent(v string) (traceID, spanID string) {
	parts := strings.Split(strings.TrimSpace(v), "-")
	if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		return "", ""
	}
	return strings.ToLower(parts[1]), strings.ToLower(parts[2])
}
