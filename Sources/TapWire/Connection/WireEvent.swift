import NIOCore

/// A header field as the bytes that travelled: HPACK values are octet strings, and a gRPC `-bin` value sent as
/// "true binary" (a 0x00 byte, then raw bytes) is not text at all.
public struct RawHeaderField: Sendable, Hashable {
    /// Lower-case on the HTTP/2 wire (a peer sending otherwise is kept as sent).
    public var name: String
    /// The value's octets exactly as decoded from HPACK; empty when `redacted`.
    public var value: [UInt8]
    /// The value was withheld at the decoder (a secret such as `authorization`); it never left the decoder.
    public var redacted: Bool

    public init(name: String, value: [UInt8], redacted: Bool = false) {
        self.name = name
        self.value = value
        self.redacted = redacted
    }
}

/// One gRPC message seen complete, for recorders.
public struct WireMessage: Sendable {
    public var direction: Direction
    public var compressed: Bool
    /// Payload length from the 5-byte prefix.
    public var length: Int
    /// The payload's first bytes, up to `Limits.messageCapture`: slices of the forwarded bytes, never copied.
    public var pieces: ByteChain

    public init(direction: Direction, compressed: Bool, length: Int, pieces: ByteChain) {
        self.direction = direction
        self.compressed = compressed
        self.length = length
        self.pieces = pieces
    }

    public init(direction: Direction, compressed: Bool, length: Int, payload: ByteBuffer) {
        self.init(direction: direction, compressed: compressed, length: length, pieces: ByteChain(payload))
    }

    /// The kept bytes in one buffer (copied when the message spanned several DATA pieces).
    public var payload: ByteBuffer { pieces.joined }

    /// True when fewer bytes were kept than the message had.
    public var truncated: Bool { pieces.count < length }
}

/// What happened on one gRPC call or sidechannel, reported as it happens rather than when the call ends.
///
/// Decoders produce these only when `GRPCCallAssembler.Limits.recordEvents` is on (recording), so the span-only
/// path pays nothing for them. Times are the injected clock's nanoseconds since the Unix epoch.
public struct WireEvent: Sendable {
    public enum Kind: Sendable {
        /// The client's request headers opened a call; `headers` include pseudo-headers, `authorization` is
        /// present but redacted.
        case callStarted(path: String, headers: [RawHeaderField])
        /// The server's response headers (not sent for a Trailers-Only answer).
        case responseHeaders([RawHeaderField])
        /// One complete message in either direction.
        case message(WireMessage)
        /// The client ended its side of the call (END_STREAM).
        case requestEnded
        /// The server's trailers; `trailersOnly` when they were the single HEADERS frame of the answer.
        case trailers([RawHeaderField], trailersOnly: Bool)
        /// The call ended; after this no event names its stream again.
        case callEnded(GRPCCallRecord.End)
        /// Gitaly opened a sidechannel with this id (its yamux stream is `yamuxStreamID`).
        case sidechannelOpened(id: Int64)
        /// Raw sidechannel bytes after the handshake, as they were forwarded (a slice, no copy).
        case sidechannelData(Direction, ByteBuffer)
        /// The sidechannel's yamux stream ended.
        case sidechannelEnded(SidechannelRecord.End)
    }

    public var kind: Kind
    public var time: UInt64
    /// The call's HTTP/2 stream id; 0 for sidechannel events.
    public var streamID: UInt32
    /// The yamux stream carrying the call's HTTP/2 session or the sidechannel; nil on a plain HTTP/2 connection.
    public var yamuxStreamID: UInt32?
    /// True for calls Gitaly made to the client over the backchannel's reverse session.
    public var fromGitaly: Bool

    public init(_ kind: Kind, time: UInt64, streamID: UInt32, yamuxStreamID: UInt32? = nil, fromGitaly: Bool = false) {
        self.kind = kind
        self.time = time
        self.streamID = streamID
        self.yamuxStreamID = yamuxStreamID
        self.fromGitaly = fromGitaly
    }
}
