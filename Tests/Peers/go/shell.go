package main

// A GitLab-Shell-like client that git uses as its ssh command (GIT_SSH_COMMAND, with GIT_SSH_VARIANT=ssh so git
// passes GIT_PROTOCOL): `git-upload-pack '<path>'` becomes SSHService/SSHUploadPackWithSidechannel, and
// `git-receive-pack '<path>'` SSHService/SSHReceivePack, over a backchannel connection to the Gitaly address.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

func runShell(args []string) {
	fs := flag.NewFlagSet("shell", flag.ExitOnError)
	var opts clientOptions
	opts.register(fs, "")
	var sshOptions stringList
	fs.Var(&sshOptions, "o", "ssh option (ignored; git passes -o SendEnv=GIT_PROTOCOL)")
	fs.String("p", "", "ssh port (ignored)")
	keyID := fs.String("key-id", "1", "key_id metadata")
	abortAfter := fs.Int64("abort-after", 0,
		"exit abruptly (status 3, connection dropped) once this many sidechannel bytes were read (tests)")
	fs.Parse(args)
	rest := fs.Args()
	if len(rest) < 2 || opts.target == "" {
		log.Fatalf("shell: usage: shell --target ADDR [flags] HOST \"git-upload-pack '<path>'\" (got %q)", args)
	}
	verb, path, err := parseSSHCommand(strings.Join(rest[1:], " "))
	if err != nil {
		log.Fatalf("shell: %v", err)
	}
	if opts.clientName == "" {
		opts.clientName = "gitlab-shell-" + verb
	}
	correlationID := opts.correlationID
	if correlationID == "" {
		correlationID = newCorrelationID()
	}
	c, err := dialBackchannel(opts.target)
	if err != nil {
		log.Fatalf("shell: %v", err)
	}
	defer c.close()
	repo := repository{StorageName: opts.storage, RelativePath: strings.TrimPrefix(path, "/"), GlRepository: opts.glRepository}
	protocol := os.Getenv("GIT_PROTOCOL")
	extra := []string{"key_id", *keyID, "key_type", "key"}
	switch verb {
	case "git-upload-pack":
		os.Exit(shellUploadPack(c, &opts, correlationID, repo, protocol, extra, *abortAfter))
	case "git-receive-pack":
		os.Exit(shellReceivePack(c, &opts, correlationID, repo, protocol, extra))
	}
	log.Fatalf("shell: unsupported command %q", verb)
}

// parseSSHCommand splits `git-upload-pack '/path'` (as git sends it) into the verb and the path.
func parseSSHCommand(command string) (verb, path string, err error) {
	verb, arg, ok := strings.Cut(strings.TrimSpace(command), " ")
	if !ok {
		return "", "", fmt.Errorf("no repository path in %q", command)
	}
	arg = strings.TrimSpace(arg)
	if len(arg) >= 2 && arg[0] == '\'' && arg[len(arg)-1] == '\'' {
		arg = arg[1 : len(arg)-1]
	}
	if verb != "git-upload-pack" && verb != "git-receive-pack" {
		return "", "", fmt.Errorf("unsupported command %q", verb)
	}
	return verb, arg, nil
}

func shellUploadPack(c *backchannelClient, opts *clientOptions, correlationID string, repo repository, protocol string,
	extra []string, abortAfter int64) int {
	id, ch := c.registerSidechannel()
	md := opts.outgoing(correlationID, "", "", append(extra, "gitaly-sidechannel-id", strconv.FormatInt(id, 10))...)
	ctx := metadata.NewOutgoingContext(context.Background(), md)
	req := appendBytes(nil, reqRepository, repo.encode())
	req = appendString(req, reqGitProtocol, protocol)
	rpcErr, sideErr, counts := c.withSidechannel(id, ch, func() error {
		var resp []byte
		return c.cc.Invoke(ctx, "/gitaly.SSHService/SSHUploadPackWithSidechannel", &req, &resp)
	}, func(conn sidechannelClientConn) error {
		go func() {
			if _, err := io.Copy(conn, os.Stdin); err == nil {
				conn.closeWrite()
			}
		}()
		var r io.Reader = conn
		if abortAfter > 0 {
			r = &abortingReader{r: conn, limit: abortAfter}
		}
		return demuxSideband(r, os.Stdout, os.Stderr)
	})
	appendStats(opts.stats, map[string]interface{}{"method": "/gitaly.SSHService/SSHUploadPackWithSidechannel",
		"correlation_id": correlationID, "sidechannel_id": id, "sidechannel_read": counts.Read,
		"sidechannel_written": counts.Written})
	if rpcErr != nil {
		fmt.Fprintf(os.Stderr, "shell: SSHUploadPackWithSidechannel: %v\n", rpcErr)
		return 1
	}
	if sideErr != nil {
		fmt.Fprintf(os.Stderr, "shell: sidechannel: %v\n", sideErr)
		return 1
	}
	return 0
}

func shellReceivePack(c *backchannelClient, opts *clientOptions, correlationID string, repo repository, protocol string,
	extra []string) int {
	md := opts.outgoing(correlationID, "", "", extra...)
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), md))
	defer cancel()
	stream, err := c.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/gitaly.SSHService/SSHReceivePack")
	if err != nil {
		fmt.Fprintf(os.Stderr, "shell: SSHReceivePack: %v\n", err)
		return 1
	}
	first := appendBytes(nil, reqRepository, repo.encode())
	first = appendString(first, recvGlID, "user-"+opts.userID)
	first = appendString(first, recvGlRepository, opts.glRepository)
	first = appendString(first, recvGlUsername, opts.username)
	first = appendString(first, recvGitProtocol, protocol)
	if err := stream.SendMsg(&first); err != nil {
		fmt.Fprintf(os.Stderr, "shell: SSHReceivePack: %v\n", err)
		return 1
	}
	go func() {
		buf := make([]byte, 32*1024)
		for {
			n, err := os.Stdin.Read(buf)
			if n > 0 {
				msg := appendBytes(nil, recvData, buf[:n])
				if stream.SendMsg(&msg) != nil {
					return
				}
			}
			if err != nil {
				stream.CloseSend()
				return
			}
		}
	}()
	code := 0
	for {
		var raw []byte
		err := stream.RecvMsg(&raw)
		if err == io.EOF {
			return code
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "shell: SSHReceivePack: %v\n", err)
			return 1
		}
		m, err := decode(raw)
		if err != nil {
			fmt.Fprintf(os.Stderr, "shell: SSHReceivePack response: %v\n", err)
			return 1
		}
		os.Stdout.Write(m.get(sshStdout))
		os.Stderr.Write(m.get(sshStderr))
		if exit, ok := m.bytes[sshExitStatus]; ok {
			status, _ := decode(exit[len(exit)-1])
			code = int(int32(status.varints[1]))
		}
	}
}

// abortingReader ends the process, as a killed client would, once limit bytes were read.
type abortingReader struct {
	r     io.Reader
	read  int64
	limit int64
}

func (a *abortingReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	a.read += int64(n)
	if a.read >= a.limit {
		fmt.Fprintf(os.Stderr, "shell: aborting after %d sidechannel bytes (--abort-after)\n", a.read)
		os.Exit(3)
	}
	return n, err
}
