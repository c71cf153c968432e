package main

// A Workhorse-like client: a small smart-HTTP git server that real git clones from and pushes to, turning each
// request into the Gitaly RPC Workhorse makes, over one backchannel connection:
//   GET  <repo>/info/refs?service=git-upload-pack   -> SmartHTTPService/InfoRefsUploadPack
//   POST <repo>/git-upload-pack                     -> SmartHTTPService/PostUploadPackWithSidechannel
//   GET  <repo>/info/refs?service=git-receive-pack  -> SmartHTTPService/InfoRefsReceivePack
//   POST <repo>/git-receive-pack                    -> SmartHTTPService/PostReceivePack
// Correlation id: the request's X-Request-Id header, else generated per request. Trace: the request's traceparent
// header continues the caller's trace.

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

type workhorse struct {
	opts clientOptions
	c    *backchannelClient
}

func runWorkhorse(args []string) {
	fs := flag.NewFlagSet("workhorse", flag.ExitOnError)
	var w workhorse
	w.opts.register(fs, "gitlab-workhorse")
	listen := fs.String("listen", "127.0.0.1:0", "HTTP listen address")
	plain := fs.Bool("plain", false, "dial plain HTTP/2 instead of the backchannel (sidechannel RPCs then fail)")
	fs.Parse(args)
	if w.opts.target == "" {
		log.Fatal("workhorse: --target is required")
	}
	dial := dialBackchannel
	if *plain {
		dial = dialPlain
	}
	c, err := dial(w.opts.target)
	if err != nil {
		log.Fatalf("workhorse: %v", err)
	}
	w.c = c
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("workhorse: listen: %v", err)
	}
	ready, _ := json.Marshal(map[string]interface{}{"url": "http://" + lis.Addr().String(), "pid": os.Getpid()})
	fmt.Printf("READY %s\n", ready)
	os.Stdout.Sync()
	log.Fatal(http.Serve(lis, &w))
}

func (w *workhorse) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	var err error
	switch {
	case r.Method == "GET" && strings.HasSuffix(path, "/info/refs"):
		service := r.URL.Query().Get("service")
		if service != "git-upload-pack" && service != "git-receive-pack" {
			http.Error(rw, "only smart HTTP is supported", http.StatusForbidden)
			return
		}
		err = w.infoRefs(rw, r, strings.TrimSuffix(path, "/info/refs"), service)
	case r.Method == "POST" && strings.HasSuffix(path, "/git-upload-pack"):
		err = w.uploadPack(rw, r, strings.TrimSuffix(path, "/git-upload-pack"))
	case r.Method == "POST" && strings.HasSuffix(path, "/git-receive-pack"):
		err = w.receivePack(rw, r, strings.TrimSuffix(path, "/git-receive-pack"))
	default:
		http.NotFound(rw, r)
		return
	}
	if err != nil {
		log.Printf("workhorse: %s %s: %v", r.Method, r.URL, err)
		http.Error(rw, err.Error(), http.StatusInternalServerError)
	}
}

// context builds the call context with Workhorse's metadata for this HTTP request.
func (w *workhorse) context(r *http.Request, extra ...string) context.Context {
	correlationID := r.Header.Get("X-Request-Id")
	if correlationID == "" {
		correlationID = w.opts.correlationID
	}
	if correlationID == "" {
		correlationID = newCorrelationID()
	}
	traceID, spanID := parseTraceparent(r.Header.Get("traceparent"))
	md := w.opts.outgoing(correlationID, traceID, spanID, extra...)
	return metadata.NewOutgoingContext(r.Context(), md)
}

func (w *workhorse) repo(p string) repository {
	return repository{StorageName: w.opts.storage, RelativePath: strings.TrimPrefix(p, "/"), GlRepository: w.opts.glRepository}
}

func (w *workhorse) infoRefs(rw http.ResponseWriter, r *http.Request, repoPath, service string) error {
	method := "/gitaly.SmartHTTPService/InfoRefsUploadPack"
	if service == "git-receive-pack" {
		method = "/gitaly.SmartHTTPService/InfoRefsReceivePack"
	}
	req := appendBytes(nil, reqRepository, w.repo(repoPath).encode())
	req = appendString(req, reqGitProtocol, r.Header.Get("Git-Protocol"))
	stream, err := w.c.cc.NewStream(w.context(r), &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&req); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	var body bytes.Buffer
	for {
		var raw []byte
		err := stream.RecvMsg(&raw)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		m, err := decode(raw)
		if err != nil {
			return err
		}
		body.Write(m.get(respData))
	}
	rw.Header().Set("Content-Type", "application/x-"+service+"-advertisement")
	rw.Header().Set("Cache-Control", "no-cache")
	_, err = rw.Write(body.Bytes())
	return err
}

func requestBody(r *http.Request) (io.Reader, error) {
	if r.Header.Get("Content-Encoding") == "gzip" {
		return gzip.NewReader(r.Body)
	}
	return r.Body, nil
}

func (w *workhorse) uploadPack(rw http.ResponseWriter, r *http.Request, repoPath string) error {
	body, err := requestBody(r)
	if err != nil {
		return err
	}
	// Workhorse reads the whole request before calling Gitaly.
	request, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	id, ch := w.c.registerSidechannel()
	ctx := w.context(r, "gitaly-sidechannel-id", strconv.FormatInt(id, 10))
	correlationID := metadataValue(ctx, "x-gitlab-correlation-id")
	req := appendBytes(nil, reqRepository, w.repo(repoPath).encode())
	req = appendString(req, reqGitProtocol, r.Header.Get("Git-Protocol"))
	var response bytes.Buffer
	rpcErr, sideErr, counts := w.c.withSidechannel(id, ch, func() error {
		var resp []byte
		return w.c.cc.Invoke(ctx, "/gitaly.SmartHTTPService/PostUploadPackWithSidechannel", &req, &resp)
	}, func(conn sidechannelClientConn) error {
		if _, err := conn.Write(request); err != nil {
			return err
		}
		if err := conn.closeWrite(); err != nil {
			return err
		}
		_, err := io.Copy(&response, conn)
		return err
	})
	appendStats(w.opts.stats, map[string]interface{}{"method": "/gitaly.SmartHTTPService/PostUploadPackWithSidechannel",
		"correlation_id": correlationID, "sidechannel_id": id, "sidechannel_read": counts.Read,
		"sidechannel_written": counts.Written})
	if rpcErr != nil {
		return rpcErr
	}
	if sideErr != nil {
		return sideErr
	}
	rw.Header().Set("Content-Type", "application/x-git-upload-pack-result")
	rw.Header().Set("Cache-Control", "no-cache")
	_, err = rw.Write(response.Bytes())
	return err
}

func (w *workhorse) receivePack(rw http.ResponseWriter, r *http.Request, repoPath string) error {
	body, err := requestBody(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(w.context(r))
	defer cancel()
	stream, err := w.c.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/gitaly.SmartHTTPService/PostReceivePack")
	if err != nil {
		return err
	}
	first := appendBytes(nil, reqRepository, w.repo(repoPath).encode())
	first = appendString(first, recvGlID, "user-"+w.opts.userID)
	first = appendString(first, recvGlRepository, w.opts.glRepository)
	first = appendString(first, recvGlUsername, w.opts.username)
	first = appendString(first, recvGitProtocol, r.Header.Get("Git-Protocol"))
	if err := stream.SendMsg(&first); err != nil {
		return err
	}
	// Responses are collected while the request streams in (Go 1.19's HTTP/1.1 server cannot answer before it has
	// read the whole body), then written out.
	var response bytes.Buffer
	var recvErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var raw []byte
			err := stream.RecvMsg(&raw)
			if err == io.EOF {
				return
			}
			if err != nil {
				recvErr = err
				return
			}
			m, err := decode(raw)
			if err != nil {
				recvErr = err
				return
			}
			response.Write(m.get(respData))
		}
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			msg := appendBytes(nil, recvData, buf[:n])
			if sendErr := stream.SendMsg(&msg); sendErr != nil {
				break
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
	}
	stream.CloseSend()
	wg.Wait()
	if recvErr != nil {
		return recvErr
	}
	rw.Header().Set("Content-Type", "application/x-git-receive-pack-result")
	rw.Header().Set("Cache-Control", "no-cache")
	_, err = rw.Write(response.Bytes())
	return err
}

func metadataValue(ctx context.Context, key string) string {
	md, _ := metadata.FromOutgoingContext(ctx)
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
