package main

// The backchannel handshake (GITALY-WIRE.md §1): one listener sniffs the first 11 bytes; `backchannel` starts a
// hashicorp yamux session whose first client stream carries the client's gRPC, Gitaly opens a stream back for its
// own gRPC session to the client, and further Gitaly-opened streams are sidechannels (`sidechannel` + 8-byte id,
// answered `ok`).

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	backchannelMagic = []byte("backchannel")
	sidechannelMagic = []byte("sidechannel")
	http2Magic       = []byte("PRI * HTTP/")
)

// muxConfig is Gitaly's yamux configuration: yamux defaults without keepalives (gRPC sends its own); Gitaly's
// server side also takes an accept backlog of 1 and a 16 MiB stream window, its clients keep yamux's 256 KiB.
func muxConfig(server bool) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	cfg.EnableKeepAlive = false
	if server {
		cfg.AcceptBacklog = 1
		cfg.MaxStreamWindowSize = 16 * 1024 * 1024
	}
	return cfg
}

// prefixConn replays bytes already read from a connection before reading on.
type prefixConn struct {
	net.Conn
	prefix []byte
	remote net.Addr
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *prefixConn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

// chanListener hands connections to a grpc.Server.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func newChanListener(name string) *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{}), addr: sessionAddr{name: name}}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, errors.New("listener closed")
	}
}

func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.closed:
		c.Close()
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// sessionAddr names a backchannel session; the server finds the yamux session of a call through it.
type sessionAddr struct {
	name string
	id   uint64
}

func (a sessionAddr) Network() string { return "backchannel" }
func (a sessionAddr) String() string  { return fmt.Sprintf("%s#%d", a.name, a.id) }

// ---------------------------------------------------------------- server side

// backchannelServer sniffs connections and tracks yamux sessions by id.
type backchannelServer struct {
	grpcListener *chanListener
	mu           sync.Mutex
	sessions     map[uint64]*serverSession
	nextID       uint64
}

type serverSession struct {
	mux *yamux.Session
	// reverse is Gitaly's gRPC client to the backchannel client (kept open, as Gitaly does).
	reverse *grpc.ClientConn
}

func newBackchannelServer() *backchannelServer {
	return &backchannelServer{grpcListener: newChanListener("gitaly"), sessions: map[uint64]*serverSession{}}
}

// serve accepts connections on l until it closes.
func (s *backchannelServer) serve(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go s.handshake(conn)
	}
}

func (s *backchannelServer) handshake(conn net.Conn) {
	buf := make([]byte, 11)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil {
		log.Printf("handshake: reading the first 11 bytes: %v", err)
		conn.Close()
		return
	}
	conn.SetReadDeadline(time.Time{})
	switch {
	case bytes.Equal(buf, http2Magic):
		s.grpcListener.push(&prefixConn{Conn: conn, prefix: buf})
	case bytes.Equal(buf, backchannelMagic):
		s.startSession(conn)
	default:
		log.Printf("handshake: unknown connection start %q", buf)
		conn.Close()
	}
}

func (s *backchannelServer) startSession(conn net.Conn) {
	mux, err := yamux.Server(conn, muxConfig(true))
	if err != nil {
		log.Printf("backchannel: yamux server: %v", err)
		conn.Close()
		return
	}
	// The client's first stream carries its gRPC session to us.
	clientStream, err := mux.Accept()
	if err != nil {
		log.Printf("backchannel: accepting the client's stream: %v", err)
		mux.Close()
		return
	}
	// Our gRPC session back to the client rides on a stream we open; as in Gitaly, grpc's dialer opens it in
	// the background, so it usually gets id 2 but a sidechannel opened at the same moment may come first.
	reverse, err := grpc.Dial("multiplexed/"+conn.RemoteAddr().String(), grpc.WithInsecure(),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return mux.Open() }))
	if err != nil {
		log.Printf("backchannel: dialing back: %v", err)
		mux.Close()
		return
	}
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.sessions[id] = &serverSession{mux: mux, reverse: reverse}
	s.mu.Unlock()
	go func() {
		<-mux.CloseChan()
		reverse.Close()
		s.mu.Lock()
		delete(s.sessions, id)
		s.mu.Unlock()
	}()
	s.grpcListener.push(&prefixConn{Conn: clientStream, remote: sessionAddr{name: "backchannel", id: id}})
}

// session returns the yamux session a call arrived on (nil for a plain HTTP/2 connection).
func (s *backchannelServer) session(addr net.Addr) *yamux.Session {
	a, ok := addr.(sessionAddr)
	if !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[a.id]; ss != nil {
		return ss.mux
	}
	return nil
}

// openSidechannel opens a sidechannel to the client: `sidechannel` + id, then waits for `ok`.
func openSidechannel(mux *yamux.Session, id int64) (net.Conn, error) {
	stream, err := mux.Open()
	if err != nil {
		return nil, fmt.Errorf("opening sidechannel stream: %w", err)
	}
	hello := append(append([]byte{}, sidechannelMagic...), putUint64(id)...)
	if _, err := stream.Write(hello); err != nil {
		stream.Close()
		return nil, fmt.Errorf("sidechannel handshake: %w", err)
	}
	stream.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 2)
	if _, err := io.ReadFull(stream, ack); err != nil || string(ack) != "ok" {
		stream.Close()
		return nil, fmt.Errorf("sidechannel handshake: no ok (%q, %v)", ack, err)
	}
	stream.SetReadDeadline(time.Time{})
	return stream, nil
}

// ---------------------------------------------------------------- client side

// backchannelClient is a client's backchannel connection: its gRPC channel to Gitaly plus the sidechannel registry.
type backchannelClient struct {
	cc       *grpc.ClientConn
	mux      *yamux.Session
	mu       sync.Mutex
	nextID   int64
	waiting  map[int64]chan net.Conn
	backList *chanListener
	backSrv  *grpc.Server
}

// dialBackchannel connects to a Gitaly address (unix:/path or tcp://host:port) with the backchannel handshake.
func dialBackchannel(address string) (*backchannelClient, error) {
	network, addr, authority, err := parseAddress(address)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	if _, err := conn.Write(backchannelMagic); err != nil {
		conn.Close()
		return nil, fmt.Errorf("write backchannel magic: %w", err)
	}
	mux, err := yamux.Client(conn, muxConfig(false))
	if err != nil {
		conn.Close()
		return nil, err
	}
	stream, err := mux.Open()
	if err != nil {
		mux.Close()
		return nil, err
	}
	var used int32
	cc, err := grpc.Dial(address, grpc.WithInsecure(), grpc.WithAuthority(authority),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if atomic.CompareAndSwapInt32(&used, 0, 1) {
				return stream, nil
			}
			return nil, errors.New("backchannel: client stream already used")
		}))
	if err != nil {
		mux.Close()
		return nil, err
	}
	c := &backchannelClient{cc: cc, mux: mux, waiting: map[int64]chan net.Conn{}, backList: newChanListener("client")}
	// The client's own gRPC server for Gitaly's calls back (Praefect votes in real life; nothing here).
	c.backSrv = grpc.NewServer(grpc.UnknownServiceHandler(func(interface{}, grpc.ServerStream) error {
		return status.Error(codes.Unimplemented, "no backchannel services")
	}))
	go c.backSrv.Serve(c.backList)
	go c.acceptLoop()
	return c, nil
}

func (c *backchannelClient) acceptLoop() {
	for {
		stream, err := c.mux.Accept()
		if err != nil {
			c.backList.Close()
			return
		}
		go c.classify(stream)
	}
}

func (c *backchannelClient) classify(stream net.Conn) {
	buf := make([]byte, 11)
	if _, err := io.ReadFull(stream, buf); err != nil {
		stream.Close()
		return
	}
	if !bytes.Equal(buf, sidechannelMagic) {
		c.backList.push(&prefixConn{Conn: stream, prefix: buf})
		return
	}
	var idb [8]byte
	if _, err := io.ReadFull(stream, idb[:]); err != nil {
		stream.Close()
		return
	}
	id := int64(binary.BigEndian.Uint64(idb[:]))
	c.mu.Lock()
	ch := c.waiting[id]
	delete(c.waiting, id)
	c.mu.Unlock()
	if ch == nil {
		log.Printf("sidechannel %d: nobody waits for it", id)
		stream.Close()
		return
	}
	// The waiting call answers `ok` itself once it holds the stream, so Gitaly cannot finish before it does.
	ch <- stream
}

// registerSidechannel reserves an id; the returned channel yields the sidechannel once Gitaly opens it (the receiver
// writes `ok`).
func (c *backchannelClient) registerSidechannel() (int64, chan net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	ch := make(chan net.Conn, 1)
	c.waiting[c.nextID] = ch
	return c.nextID, ch
}

func (c *backchannelClient) cancelSidechannel(id int64) {
	c.mu.Lock()
	delete(c.waiting, id)
	c.mu.Unlock()
}

func (c *backchannelClient) close() {
	c.cc.Close()
	if c.mux != nil {
		c.mux.Close()
	}
}

// sidechannelClientConn is the client's side: writes go out as pkt-lines, closeWrite sends the flush.
type sidechannelClientConn struct{ net.Conn }

func (s sidechannelClientConn) Write(p []byte) (int, error) {
	if err := writePktLines(s.Conn, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s sidechannelClientConn) closeWrite() error {
	_, err := s.Conn.Write([]byte("0000"))
	return err
}

// parseAddress turns a Gitaly address into a dial network/address and the :authority grpc-go would send.
func parseAddress(address string) (network, addr, authority string, err error) {
	switch {
	case strings.HasPrefix(address, "unix://"):
		return "unix", strings.TrimPrefix(address, "unix://"), "localhost", nil
	case strings.HasPrefix(address, "unix:"):
		return "unix", strings.TrimPrefix(address, "unix:"), "localhost", nil
	case strings.HasPrefix(address, "tcp://"):
		a := strings.TrimPrefix(address, "tcp://")
		return "tcp", a, a, nil
	case strings.HasPrefix(address, "/"):
		return "unix", address, "localhost", nil
	}
	return "", "", "", fmt.Errorf("unsupported address %q (want unix:/path or tcp://host:port)", address)
}

// withSidechannel runs invoke (a call carrying gitaly-sidechannel-id = id) while handle serves the sidechannel,
// and returns both results once both are done (handle is skipped when Gitaly never opened the sidechannel).
func (c *backchannelClient) withSidechannel(id int64, ch chan net.Conn, invoke func() error,
	handle func(sidechannelClientConn) error) (rpcErr, sideErr error, counts sidechannelCounts) {
	counted := &countingConn{}
	got := make(chan error, 1)
	rpcDone := make(chan struct{})
	go func() {
		var conn net.Conn
		select {
		case conn = <-ch:
		case <-rpcDone:
			select {
			case conn = <-ch:
			default:
				got <- errors.New("gitaly did not open the sidechannel")
				return
			}
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("ok")); err != nil {
			got <- err
			return
		}
		counted.Conn = conn
		err := handle(sidechannelClientConn{counted})
		// Closed (its FIN written) before the result is handed over: the caller may tear the session down at
		// once, and a FIN still to come would then never be sent.
		conn.Close()
		got <- err
	}()
	rpcErr = invoke()
	close(rpcDone)
	c.cancelSidechannel(id)
	sideErr = <-got
	counts = sidechannelCounts{Read: atomic.LoadInt64(&counted.read), Written: atomic.LoadInt64(&counted.written)}
	return rpcErr, sideErr, counts
}

// sidechannelCounts are the bytes a client moved on one sidechannel after the handshake (`sidechannel`+id, `ok`).
type sidechannelCounts struct {
	Read    int64 `json:"sidechannel_read"`
	Written int64 `json:"sidechannel_written"`
}

type countingConn struct {
	net.Conn
	read, written int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	atomic.AddInt64(&c.read, int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	atomic.AddInt64(&c.written, int64(n))
	return n, err
}

// dialPlain connects without the backchannel handshake: a plain HTTP/2 gRPC connection, as Rails makes.
func dialPlain(address string) (*backchannelClient, error) {
	network, addr, authority, err := parseAddress(address)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.Dial(address, grpc.WithInsecure(), grpc.WithAuthority(authority),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}))
	if err != nil {
		return nil, err
	}
	return &backchannelClient{cc: cc, waiting: map[int64]chan net.Conn{}}, nil
}

// appendStats appends one JSON line to the stats file named by --stats (if any).
func appendStats(path string, record map[string]interface{}) {
	if path == "" {
		return
	}
	b, _ := json.Marshal(record)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		log.Printf("stats: %v", err)
		return
	}
	defer f.Close()
	f.Write(append(b, '\n'))
}
