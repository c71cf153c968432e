// Command gitaly-peer holds the Go test peers of gitaly-tap, built from the real yamux and grpc-go that Gitaly's
// backchannel uses (see Tests/Peers/README.md):
//
//	gitaly-peer upstream  --listen ADDR... --storage NAME=DIR [--trace2 tempfile|inherit|off]
//	gitaly-peer shell     --target ADDR [flags] HOST "git-upload-pack '<path>'"   (as GIT_SSH_COMMAND)
//	gitaly-peer workhorse --target ADDR [flags] [--listen 127.0.0.1:0]
package main

import (
	"fmt"
	"log"
	"os"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("gitaly-peer: ")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gitaly-peer upstream|shell|workhorse [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "upstream":
		runUpstream(os.Args[2:])
	case "shell":
		runShell(os.Args[2:])
	case "workhorse":
		runWorkhorse(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "gitaly-peer: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
}
