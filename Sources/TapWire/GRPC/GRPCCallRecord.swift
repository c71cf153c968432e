import NIOCore

/// Everything the tap learned about one gRPC call (one HTTP/2 stream), handed out when the call ends.
///
/// Times are nanoseconds since the Unix epoch, from the clock the caller injects into the decoder.
public struct GRPCCallRecord: Sendable {
    /// How the call ended.
    public enum End: Sendable, Hashable {
        /// The server sent trailers (HEADERS with END_STREAM) after its response headers.
        case trailers
        /// The server answered with a single HEADERS frame carrying the status (Trailers-Only).
        case trailersOnly
        /// A RST_STREAM ended the stream; `by` is the direction the frame travelled in.
        case reset(by: Direction, code: UInt32)
        /// The server's GOAWAY said this stream was never processed.
        case refusedByGoAway(code: UInt32)
        /// The connection closed before the call ended.
        case connectionLost
        /// The decoder stopped before the call ended (the reason is in the connection's log line).
        case decodingStopped(String)
    }

    public var streamID: UInt32
    /// The raw `:path`, e.g. `/gitaly.RepositoryService/RepositoryExists`.
    public var path: String
    public var authority: String?
    public var method: String?
    public var contentType: String?
    /// Request metadata without pseudo-headers and without `authorization`.
    public var requestMetadata: [HeaderField]
    /// True when the request carried `authorization` (its value is never kept).
    public var hadAuthorization = false
    /// `grpc-timeout` in nanoseconds.
    public var timeoutNanos: Int64?
    public var requestEncoding: String?
    public var httpStatus: Int?
    public var responseMetadata: [HeaderField] = []
    public var trailers: [HeaderField] = []
    public var grpcStatus: Int?
    /// Percent-decoded `grpc-message`.
    public var grpcMessage: String?

    public var requestMessages = 0
    /// Payload bytes of request messages (prefixes excluded).
    public var requestBytes = 0
    /// DATA content bytes the client sent on this stream (prefixes included).
    public var requestWireBytes = 0
    public var responseMessages = 0
    public var responseBytes = 0
    public var responseWireBytes = 0

    /// The first request message (up to the capture limit), for attribute extraction.
    public var firstRequestMessage: ByteBuffer?
    public var firstRequestMessageCompressed = false
    public var firstRequestMessageLength = 0

    /// The yamux stream carrying this call's HTTP/2 session, for calls on a backchannel connection.
    public var yamuxStreamID: UInt32?
    /// True for calls Gitaly made to the client over the backchannel (the reverse session).
    public var fromGitaly = false
    /// The sidechannel named by `gitaly-sidechannel-id`, once it ended.
    public var sidechannel: SidechannelRecord?

    public var startTime: UInt64
    /// When the client half-closed its side.
    public var requestEndTime: UInt64?
    /// When the first response byte (HEADERS or DATA) from the server was seen.
    public var firstResponseTime: UInt64?
    public var endTime: UInt64 = 0
    public var end: End = .connectionLost

    public init(streamID: UInt32, path: String, startTime: UInt64) {
        self.streamID = streamID
        self.path = path
        self.requestMetadata = []
        self.startTime = startTime
    }

    /// `package.Service` from `:path`.
    public var service: String? { serviceAndMethod?.service }

    /// The method name from `:path`.
    public var methodName: String? { serviceAndMethod?.method }

    /// Service and method from a `:path` of the form `/<service>/<method>` (a leading `/` optional, one more `/`,
    /// both parts non-empty); nil for any other path. One scan of the UTF-8 bytes (walking the `String` itself
    /// goes by grapheme clusters, several times slower; this runs for every span).
    public var serviceAndMethod: (service: String, method: String)? {
        let utf8 = path.utf8
        var start = utf8.startIndex
        if start < utf8.endIndex, utf8[start] == UInt8(ascii: "/") { start = utf8.index(after: start) }
        guard let slash = utf8[start...].firstIndex(of: UInt8(ascii: "/")), slash > start else { return nil }
        let methodStart = utf8.index(after: slash)
        var methodEnd = utf8.endIndex
        // A trailing `/` is allowed (it was omitted before), any other `/` makes the path something else.
        if let next = utf8[methodStart...].firstIndex(of: UInt8(ascii: "/")) {
            guard utf8.index(after: next) == utf8.endIndex else { return nil }
            methodEnd = next
        }
        guard methodStart < methodEnd else { return nil }
        return (String(Substring(utf8[start..<slash])), String(Substring(utf8[methodStart..<methodEnd])))
    }

    /// The first value of request metadata `name`.
    public func requestHeader(_ name: String) -> String? {
        requestMetadata.first { $0.name == name }?.value
    }
}
