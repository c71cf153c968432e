/// Which way bytes travel on a connection, relative to the party that opened it.
public enum Direction: Sendable, Hashable {
    /// From the connecting client toward the upstream server.
    case clientToServer
    /// From the upstream server back toward the client.
    case serverToClient

    /// The other direction.
    public var reversed: Direction {
        self == .clientToServer ? .serverToClient : .clientToServer
    }
}

/// A header field as decoded from an HPACK block (names are lower-case on the HTTP/2 wire).
public struct HeaderField: Sendable, Hashable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}
