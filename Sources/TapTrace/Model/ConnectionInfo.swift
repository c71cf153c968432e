/// What the tap knows about one proxied connection, attached to every span it produces.
public struct ConnectionInfo: Sendable, Hashable {
    /// Process-unique connection number, in accept order.
    public var id: UInt64
    /// `unix` or `tcp` (OpenTelemetry `network.transport`).
    public var transport: String
    /// The client's address as the listener saw it (empty for unix sockets, which have no peer name).
    public var peer: String
    /// The address the tap listens on.
    public var listenAddress: String
    /// The upstream Gitaly address.
    public var upstreamAddress: String
    public var startTimeUnixNano: UInt64

    public init(
        id: UInt64, transport: String, peer: String, listenAddress: String, upstreamAddress: String,
        startTimeUnixNano: UInt64
    ) {
        self.id = id
        self.transport = transport
        self.peer = peer
        self.listenAddress = listenAddress
        self.upstreamAddress = upstreamAddress
        self.startTimeUnixNano = startTimeUnixNano
    }
}

/// The end of a connection, reported once per connection.
public struct ConnectionSummary: Sendable {
    public var info: ConnectionInfo
    /// `http2`, `backchannel`, `opaque` or `undetermined`.
    public var kind: String
    public var bytesToServer: Int
    public var bytesToClient: Int
    public var endTimeUnixNano: UInt64
    /// Why decoding stopped, if it did.
    public var decodingStopped: String?
    /// How the connection ended (`closed`, `reset by client`, an error text).
    public var closeReason: String
    public var calls: Int

    public init(
        info: ConnectionInfo, kind: String, bytesToServer: Int, bytesToClient: Int, endTimeUnixNano: UInt64,
        decodingStopped: String?, closeReason: String, calls: Int
    ) {
        self.info = info
        self.kind = kind
        self.bytesToServer = bytesToServer
        self.bytesToClient = bytesToClient
        self.endTimeUnixNano = endTimeUnixNano
        self.decodingStopped = decodingStopped
        self.closeReason = closeReason
        self.calls = calls
    }
}
