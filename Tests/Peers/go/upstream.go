package main

// A Gitaly-like upstream: one listener per address accepting plain HTTP/2 and backchannel connections, serving the
// clone/push RPCs of SmartHTTPService and SSHService by running real git the way Gitaly does (GITALY-WIRE.md §5).

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

type upstream struct {
	bc       *backchannelServer
	storages map[string]string
	trace2   string
	git      string
	logMu    sync.Mutex
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runUpstream(args []string) {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	var listens, storages stringList
	fs.Var(&listens, "listen", "unix:/abs/path or tcp://host:port (repeatable; port 0 picks one)")
	fs.Var(&storages, "storage", "NAME=DIR: a storage and its root directory (repeatable)")
	trace2 := fs.String("trace2", "tempfile",
		"Trace2 of the git commands: tempfile (Gitaly: $TMPDIR/gitaly-trace2<random>, removed after the command), "+
			"inherit (pass this process's GIT_TRACE2* variables to git), off")
	gitBin := fs.String("git", "git", "git executable")
	fs.Parse(args)
	if len(listens) == 0 || len(storages) == 0 {
		log.Fatal("upstream: need at least one --listen and one --storage")
	}
	switch *trace2 {
	case "tempfile", "inherit", "off":
	default:
		log.Fatalf("upstream: --trace2 must be tempfile, inherit or off, not %q", *trace2)
	}
	u := &upstream{bc: newBackchannelServer(), storages: map[string]string{}, trace2: *trace2, git: *gitBin}
	for _, s := range storages {
		name, dir, ok := strings.Cut(s, "=")
		if !ok || name == "" || !filepath.IsAbs(dir) {
			log.Fatalf("upstream: --storage %q: want NAME=/abs/dir", s)
		}
		u.storages[name] = dir
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(u.handle), grpc.MaxRecvMsgSize(64<<20))
	go srv.Serve(u.bc.grpcListener)
	var bound []string
	for _, l := range listens {
		network, addr, _, err := parseAddress(l)
		if err != nil {
			log.Fatal(err)
		}
		if network == "unix" {
			os.Remove(addr)
		}
		lis, err := net.Listen(network, addr)
		if err != nil {
			log.Fatalf("upstream: listen %s: %v", l, err)
		}
		if network == "tcp" {
			bound = append(bound, "tcp://"+lis.Addr().String())
		} else {
			bound = append(bound, "unix:"+addr)
		}
		go u.bc.serve(lis)
	}
	ready, _ := json.Marshal(map[string]interface{}{"listen": bound, "pid": os.Getpid(), "trace2": *trace2})
	fmt.Printf("READY %s\n", ready)
	os.Stdout.Sync()
	select {}
}

// callInfo is what a handler knows about its call.
type callInfo struct {
	method        string
	correlationID string
	md            metadata.MD
	stream        grpc.ServerStream
}

func (u *upstream) handle(_ interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	md, _ := metadata.FromIncomingContext(stream.Context())
	call := callInfo{method: method, md: md, stream: stream}
	if v := md.Get("x-gitlab-correlation-id"); len(v) > 0 {
		call.correlationID = v[0]
	}
	start := time.Now()
	err := u.dispatch(call)
	u.logCall(call, err, time.Since(start))
	return err
}

func (u *upstream) logCall(call callInfo, err error, d time.Duration) {
	line := map[string]interface{}{"method": call.method, "correlation_id": call.correlationID,
		"duration_ms": d.Milliseconds(), "code": status.Code(err).String()}
	for _, k := range []string{"x-gitlab-client-name", "gitaly-sidechannel-id", "traceparent", "uber-trace-id", "user_id", "username"} {
		if v := call.md.Get(k); len(v) > 0 {
			line[k] = v[0]
		}
	}
	if err != nil {
		line["error"] = err.Error()
	}
	b, _ := json.Marshal(line)
	u.logMu.Lock()
	fmt.Fprintf(os.Stderr, "%s\n", b)
	u.logMu.Unlock()
}

func (u *upstream) dispatch(call callInfo) error {
	switch call.method {
	case "/gitaly.SmartHTTPService/InfoRefsUploadPack":
		return u.infoRefs(call, "upload-pack")
	case "/gitaly.SmartHTTPService/InfoRefsReceivePack":
		return u.infoRefs(call, "receive-pack")
	case "/gitaly.SmartHTTPService/PostUploadPackWithSidechannel":
		return u.uploadPackWithSidechannel(call, true)
	case "/gitaly.SSHService/SSHUploadPackWithSidechannel":
		return u.uploadPackWithSidechannel(call, false)
	case "/gitaly.SmartHTTPService/PostReceivePack":
		return u.receivePack(call, true)
	case "/gitaly.SSHService/SSHReceivePack":
		return u.receivePack(call, false)
	}
	return status.Errorf(codes.Unimplemented, "unknown method %s", call.method)
}

// repoPath resolves a Repository message to its directory under a storage.
func (u *upstream) repoPath(raw []byte) (string, repository, error) {
	repo, err := decodeRepository(raw)
	if err != nil {
		return "", repo, status.Errorf(codes.InvalidArgument, "repository: %v", err)
	}
	root, ok := u.storages[repo.StorageName]
	if !ok {
		return "", repo, status.Errorf(codes.InvalidArgument, "storage not found: %q", repo.StorageName)
	}
	rel := filepath.Clean("/" + repo.RelativePath)
	if repo.RelativePath == "" || strings.Contains(repo.RelativePath, "..") {
		return "", repo, status.Errorf(codes.InvalidArgument, "bad relative path %q", repo.RelativePath)
	}
	path := filepath.Join(root, rel)
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		return "", repo, status.Errorf(codes.NotFound, "repository not found: %s", repo.RelativePath)
	}
	return path, repo, nil
}

// gitCommand builds `git --git-dir <repo> [-c opt]... <sub> <args>` with Gitaly's allow-listed environment.
func (u *upstream) gitCommand(call callInfo, repo string, configs []string, protocol string, extraEnv []string,
	sub string, args ...string) (*exec.Cmd, func(), error) {
	argv := []string{"--git-dir", repo}
	for _, c := range configs {
		argv = append(argv, "-c", c)
	}
	argv = append(argv, sub)
	argv = append(argv, args...)
	cmd := exec.Command(u.git, argv...)
	env := []string{"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_SYSTEM=/dev/null", "GIT_TERMINAL_PROMPT=0"}
	for _, k := range []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	if call.correlationID != "" {
		env = append(env, "CORRELATION_ID="+call.correlationID)
	}
	if protocol != "" {
		env = append(env, "GIT_PROTOCOL="+protocol)
	}
	env = append(env, extraEnv...)
	cleanup := func() {}
	switch u.trace2 {
	case "tempfile":
		f, err := ioutil.TempFile(os.Getenv("TMPDIR"), "gitaly-trace2")
		if err != nil {
			return nil, nil, status.Errorf(codes.Internal, "trace2 file: %v", err)
		}
		name := f.Name()
		f.Close()
		env = append(env, "GIT_TRACE2_EVENT="+name, "GIT_TRACE2_BRIEF=true")
		if call.correlationID != "" {
			env = append(env, "GIT_TRACE2_PARENT_SID="+call.correlationID)
		}
		cleanup = func() {
			if data, err := ioutil.ReadFile(name); err == nil {
				events, underCorrelation := 0, 0
				for _, line := range bytes.Split(data, []byte("\n")) {
					var event struct {
						Sid string `json:"sid"`
					}
					if json.Unmarshal(line, &event) != nil {
						continue
					}
					events++
					if call.correlationID != "" && strings.HasPrefix(event.Sid, call.correlationID+"/") {
						underCorrelation++
					}
				}
				b, _ := json.Marshal(map[string]interface{}{"trace2_file": name, "events": events,
					"events_under_correlation_id": underCorrelation, "correlation_id": call.correlationID})
				u.logMu.Lock()
				fmt.Fprintf(os.Stderr, "%s\n", b)
				u.logMu.Unlock()
			}
			os.Remove(name)
		}
	case "inherit":
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "GIT_TRACE2") {
				env = append(env, kv)
			}
		}
	}
	cmd.Env = env
	return cmd, cleanup, nil
}

func firstMessage(stream grpc.ServerStream) (message, error) {
	var raw []byte
	if err := stream.RecvMsg(&raw); err != nil {
		return message{}, err
	}
	m, err := decode(raw)
	if err != nil {
		return m, status.Errorf(codes.InvalidArgument, "request: %v", err)
	}
	return m, nil
}

// streamWriter sends each write as a response message with the bytes in field `field`.
type streamWriter struct {
	stream grpc.ServerStream
	field  int
	mu     *sync.Mutex
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for off := 0; off < len(p); off += 128 * 1024 {
		end := off + 128*1024
		if end > len(p) {
			end = len(p)
		}
		msg := appendBytes(nil, w.field, p[off:end])
		if err := w.stream.SendMsg(&msg); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

func (u *upstream) infoRefs(call callInfo, service string) error {
	req, err := firstMessage(call.stream)
	if err != nil {
		return err
	}
	path, _, err := u.repoPath(req.get(reqRepository))
	if err != nil {
		return err
	}
	cmd, cleanup, err := u.gitCommand(call, path, req.strs(reqGitConfigOptions), req.str(reqGitProtocol), nil,
		service, "--stateless-rpc", "--advertise-refs", path)
	if err != nil {
		return err
	}
	defer cleanup()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	var out bytes.Buffer
	header := fmt.Sprintf("# service=git-%s\n", service)
	fmt.Fprintf(&out, "%04x%s0000", len(header)+4, header)
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		return status.Errorf(codes.Internal, "git %s --advertise-refs: %v: %s", service, err, stderr.String())
	}
	_, err = streamWriter{call.stream, respData, &sync.Mutex{}}.Write(out.Bytes())
	return err
}

// uploadPackWithSidechannel serves PostUploadPackWithSidechannel (HTTP: stateless, raw output) and
// SSHUploadPackWithSidechannel (SSH: full duplex, stdout/stderr in sideband pkt-lines).
func (u *upstream) uploadPackWithSidechannel(call callInfo, http bool) error {
	req, err := firstMessage(call.stream)
	if err != nil {
		return err
	}
	path, _, err := u.repoPath(req.get(reqRepository))
	if err != nil {
		return err
	}
	ids := call.md.Get("gitaly-sidechannel-id")
	if len(ids) == 0 {
		return status.Error(codes.InvalidArgument, "no gitaly-sidechannel-id")
	}
	id, err := strconv.ParseInt(ids[0], 10, 64)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "bad gitaly-sidechannel-id %q", ids[0])
	}
	p, _ := peer.FromContext(call.stream.Context())
	var mux = u.bc.session(nil)
	if p != nil {
		mux = u.bc.session(p.Addr)
	}
	if mux == nil {
		return status.Error(codes.Unavailable, "sidechannel needs a backchannel connection")
	}
	conn, err := openSidechannel(mux, id)
	if err != nil {
		return status.Errorf(codes.Unavailable, "opening sidechannel: %v", err)
	}
	defer conn.Close()
	args := []string{path}
	if http {
		args = []string{"--stateless-rpc", path}
	}
	cmd, cleanup, err := u.gitCommand(call, path, req.strs(reqGitConfigOptions), req.str(reqGitProtocol), nil,
		"upload-pack", args...)
	if err != nil {
		return err
	}
	defer cleanup()
	var stderr bytes.Buffer
	var mu sync.Mutex
	if http {
		cmd.Stdout = conn
		cmd.Stderr = &stderr
	} else {
		cmd.Stdout = sidebandWriter{w: conn, band: 1, mu: &mu}
		cmd.Stderr = io.MultiWriter(sidebandWriter{w: conn, band: 2, mu: &mu}, &stderr)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return status.Errorf(codes.Internal, "stdin: %v", err)
	}
	if err := cmd.Start(); err != nil {
		return status.Errorf(codes.Internal, "git upload-pack: %v", err)
	}
	// Not waited for: the client may keep its side open after upload-pack is done (SSH).
	go func() {
		io.Copy(stdin, newPktLineReader(conn))
		stdin.Close()
	}()
	if err := cmd.Wait(); err != nil {
		return status.Errorf(codes.Internal, "running upload-pack: %v: %s", err, stderr.String())
	}
	if err := conn.Close(); err != nil {
		return status.Errorf(codes.Internal, "closing sidechannel: %v", err)
	}
	empty := []byte{}
	return call.stream.SendMsg(&empty)
}

// receivePack serves PostReceivePack (HTTP, stateless, data in field 1) and SSHReceivePack (stdout/stderr/exit
// status in fields 1/2/3).
func (u *upstream) receivePack(call callInfo, http bool) error {
	req, err := firstMessage(call.stream)
	if err != nil {
		return err
	}
	path, repo, err := u.repoPath(req.get(reqRepository))
	if err != nil {
		return err
	}
	glRepository := req.str(recvGlRepository)
	if glRepository == "" {
		glRepository = repo.GlRepository
	}
	env := []string{"GL_ID=" + req.str(recvGlID), "GL_REPOSITORY=" + glRepository, "GL_USERNAME=" + req.str(recvGlUsername)}
	if http {
		env = append(env, "GL_PROTOCOL=http")
	} else {
		env = append(env, "GL_PROTOCOL=ssh")
	}
	args := []string{path}
	if http {
		args = []string{"--stateless-rpc", path}
	}
	cmd, cleanup, err := u.gitCommand(call, path, req.strs(recvGitConfigOptions), req.str(recvGitProtocol), env,
		"receive-pack", args...)
	if err != nil {
		return err
	}
	defer cleanup()
	var mu sync.Mutex
	var stderr bytes.Buffer
	cmd.Stdout = streamWriter{call.stream, respData, &mu}
	if http {
		cmd.Stderr = &stderr
	} else {
		cmd.Stderr = io.MultiWriter(streamWriter{call.stream, sshStderr, &mu}, &stderr)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return status.Errorf(codes.Internal, "stdin: %v", err)
	}
	if err := cmd.Start(); err != nil {
		return status.Errorf(codes.Internal, "git receive-pack: %v", err)
	}
	first := req.get(recvData)
	go func() {
		defer stdin.Close()
		if len(first) > 0 {
			if _, err := stdin.Write(first); err != nil {
				return
			}
		}
		for {
			var raw []byte
			if err := call.stream.RecvMsg(&raw); err != nil {
				return
			}
			m, err := decode(raw)
			if err != nil {
				return
			}
			if _, err := stdin.Write(m.get(recvData)); err != nil {
				return
			}
		}
	}()
	waitErr := cmd.Wait()
	if http {
		if waitErr != nil {
			return status.Errorf(codes.Internal, "running receive-pack: %v: %s", waitErr, stderr.String())
		}
		return nil
	}
	code := 0
	if exitErr, ok := waitErr.(*exec.ExitError); ok {
		code = exitErr.ExitCode()
	} else if waitErr != nil {
		return status.Errorf(codes.Internal, "running receive-pack: %v", waitErr)
	}
	// ExitStatus{value: 0} encodes as an empty message, still present as field 3.
	exit := []byte{byte(sshExitStatus<<3 | 2), 0}
	if code != 0 {
		exit = appendBytes(nil, sshExitStatus, appendInt(nil, 1, int64(code)))
	}
	mu.Lock()
	defer mu.Unlock()
	return call.stream.SendMsg(&exit)
}
