package main

// Hand-written protobuf wire encoding for the few Gitaly messages the peers use (field numbers from Gitaly's
// smarthttp.proto, ssh.proto and shared.proto), a raw-bytes gRPC codec, and git pkt-line helpers.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"google.golang.org/grpc/encoding"
)

// rawCodec moves protobuf payloads as they are: messages are *[]byte, encoded and decoded by hand.
// Registered under the name "proto" so both the server and the client stubs use it.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case *[]byte:
		return *m, nil
	case []byte:
		return m, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*m = append((*m)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func init() { encoding.RegisterCodec(rawCodec{}) }

// Field numbers (Gitaly protos).
const (
	// Repository
	repoStorageName   = 2
	repoRelativePath  = 3
	repoGlRepository  = 6
	repoGlProjectPath = 8
	// InfoRefsRequest, PostUploadPackWithSidechannelRequest, SSHUploadPackWithSidechannelRequest:
	// repository=1, git_config_options=2, git_protocol=3.
	reqRepository       = 1
	reqGitConfigOptions = 2
	reqGitProtocol      = 3
	// InfoRefsResponse, PostReceivePackResponse: data=1.
	respData = 1
	// PostReceivePackRequest and SSHReceivePackRequest: repository=1, data/stdin=2, gl_id=3, gl_repository=4,
	// gl_username=5, git_protocol=6, git_config_options=7.
	recvData             = 2
	recvGlID             = 3
	recvGlRepository     = 4
	recvGlUsername       = 5
	recvGitProtocol      = 6
	recvGitConfigOptions = 7
	// SSHReceivePackResponse: stdout=1, stderr=2, exit_status=3 (ExitStatus.value=1).
	sshStdout     = 1
	sshStderr     = 2
	sshExitStatus = 3
)

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// appendBytes appends a length-delimited field (wire type 2); empty values are left out as proto3 does.
func appendBytes(b []byte, field int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendVarint(b, uint64(field)<<3|2)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendString(b []byte, field int, v string) []byte { return appendBytes(b, field, []byte(v)) }

func appendInt(b []byte, field int, v int64) []byte {
	if v == 0 {
		return b
	}
	b = appendVarint(b, uint64(field)<<3)
	return appendVarint(b, uint64(v))
}

// message is a decoded protobuf message: the length-delimited and varint fields by number.
type message struct {
	bytes   map[int][][]byte
	varints map[int]uint64
}

func (m message) get(field int) []byte {
	if v := m.bytes[field]; len(v) > 0 {
		return v[len(v)-1]
	}
	return nil
}

func (m message) str(field int) string { return string(m.get(field)) }

func (m message) strs(field int) []string {
	var out []string
	for _, v := range m.bytes[field] {
		out = append(out, string(v))
	}
	return out
}

func readVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, errors.New("protobuf: bad varint")
}

func decode(b []byte) (message, error) {
	m := message{bytes: map[int][][]byte{}, varints: map[int]uint64{}}
	for len(b) > 0 {
		tag, n, err := readVarint(b)
		if err != nil {
			return m, err
		}
		b = b[n:]
		field := int(tag >> 3)
		switch tag & 7 {
		case 0:
			v, n, err := readVarint(b)
			if err != nil {
				return m, err
			}
			m.varints[field] = v
			b = b[n:]
		case 1:
			if len(b) < 8 {
				return m, errors.New("protobuf: short fixed64")
			}
			b = b[8:]
		case 2:
			l, n, err := readVarint(b)
			if err != nil {
				return m, err
			}
			b = b[n:]
			if uint64(len(b)) < l {
				return m, errors.New("protobuf: length beyond message")
			}
			m.bytes[field] = append(m.bytes[field], b[:l])
			b = b[l:]
		case 5:
			if len(b) < 4 {
				return m, errors.New("protobuf: short fixed32")
			}
			b = b[4:]
		default:
			return m, fmt.Errorf("protobuf: unsupported wire type %d", tag&7)
		}
	}
	return m, nil
}

// repository is gitaly.Repository.
type repository struct {
	StorageName, RelativePath, GlRepository, GlProjectPath string
}

func (r repository) encode() []byte {
	var b []byte
	b = appendString(b, repoStorageName, r.StorageName)
	b = appendString(b, repoRelativePath, r.RelativePath)
	b = appendString(b, repoGlRepository, r.GlRepository)
	b = appendString(b, repoGlProjectPath, r.GlProjectPath)
	return b
}

func decodeRepository(b []byte) (repository, error) {
	m, err := decode(b)
	if err != nil {
		return repository{}, err
	}
	return repository{m.str(repoStorageName), m.str(repoRelativePath), m.str(repoGlRepository), m.str(repoGlProjectPath)}, nil
}

// --- pkt-line ---

const maxPktPayload = 65516

// writePktLines writes p as pkt-lines of at most maxPktPayload bytes each (the sidechannel client's framing).
func writePktLines(w io.Writer, p []byte) error {
	for len(p) > 0 {
		n := len(p)
		if n > maxPktPayload {
			n = maxPktPayload
		}
		if _, err := fmt.Fprintf(w, "%04x", n+4); err != nil {
			return err
		}
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// pktLineReader yields the payloads of pkt-lines until a flush packet (then io.EOF): the sidechannel server's
// view of what the client sends.
type pktLineReader struct {
	r       *bufio.Reader
	pending []byte
	done    bool
}

func newPktLineReader(r io.Reader) *pktLineReader {
	return &pktLineReader{r: bufio.NewReaderSize(r, 65536)}
}

func (p *pktLineReader) Read(b []byte) (int, error) {
	for len(p.pending) == 0 {
		if p.done {
			return 0, io.EOF
		}
		payload, flush, err := readPktLine(p.r)
		if err == io.EOF {
			// As Gitaly: the client must end with a flush packet; a bare end of stream is an error.
			return 0, io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, err
		}
		if flush {
			p.done = true
			return 0, io.EOF
		}
		p.pending = payload
	}
	n := copy(b, p.pending)
	p.pending = p.pending[n:]
	return n, nil
}

// readPktLine reads one pkt-line; flush is true for 0000 (0001/0002 are returned as empty payloads).
func readPktLine(r io.Reader) (payload []byte, flush bool, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, false, err
	}
	n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
	if err != nil {
		return nil, false, fmt.Errorf("pkt-line: bad length %q", hdr[:])
	}
	if n == 0 {
		return nil, true, nil
	}
	if n < 4 {
		return []byte{}, false, nil
	}
	payload = make([]byte, n-4)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, false, err
	}
	return payload, false, nil
}

// sidebandWriter wraps each write in pkt-lines of one band (1 stdout, 2 stderr), as Gitaly's SidebandWriter does.
type sidebandWriter struct {
	w    io.Writer
	band byte
	mu   interface {
		Lock()
		Unlock()
	}
}

func (s sidebandWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	written := 0
	for len(p) > 0 {
		n := len(p)
		if n > maxPktPayload-1 {
			n = maxPktPayload - 1
		}
		buf := make([]byte, 0, n+5)
		buf = append(buf, fmt.Sprintf("%04x", n+5)...)
		buf = append(buf, s.band)
		buf = append(buf, p[:n]...)
		if _, err := s.w.Write(buf); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// demuxSideband reads banded pkt-lines from r until EOF, copying band 1 to stdout and band 2 to stderr.
func demuxSideband(r io.Reader, stdout, stderr io.Writer) error {
	br := bufio.NewReaderSize(r, 65536)
	for {
		payload, flush, err := readPktLine(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if flush || len(payload) == 0 {
			continue
		}
		switch payload[0] {
		case 1:
			if _, err := stdout.Write(payload[1:]); err != nil {
				return err
			}
		case 2:
			if _, err := stderr.Write(payload[1:]); err != nil {
				return err
			}
		default:
			return fmt.Errorf("sideband: unexpected band %d", payload[0])
		}
	}
}

func putUint64(v int64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(v))
	return b[:]
}
