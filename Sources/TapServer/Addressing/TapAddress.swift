import NIOCore

/// An address in Gitaly's own forms: `unix:/abs/path`, `tcp://host:port`, `tls://host:port`.
public enum TapAddress: Sendable, Hashable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)
    case tls(host: String, port: Int)

    /// A user mistake in an address, phrased to say what to write instead.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Parses `text`; the error says which forms are accepted.
    public init(parsing text: String) throws(ParseError) {
        let forms = "use unix:/absolute/path, tcp://host:port or tls://host:port"
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else { throw ParseError(description: "address '\(text)': unix path must be absolute (\(forms))") }
            self = .unix(path: path)
        } else if text.hasPrefix("unix:") {
            let path = String(text.dropFirst("unix:".count))
            guard path.hasPrefix("/") else { throw ParseError(description: "address '\(text)': unix path must be absolute (\(forms))") }
            self = .unix(path: path)
        } else if text.hasPrefix("tcp://") || text.hasPrefix("tls://") {
            let rest = String(text.dropFirst(6))
            guard let colon = rest.lastIndex(of: ":") else {
                throw ParseError(description: "address '\(text)' has no port (\(forms))")
            }
            var host = String(rest[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty, let port = Int(rest[rest.index(after: colon)...]), (0...65535).contains(port) else {
                throw ParseError(description: "address '\(text)' needs a host and a port from 0 to 65535 (\(forms))")
            }
            self = text.hasPrefix("tcp://") ? .tcp(host: host, port: port) : .tls(host: host, port: port)
        } else {
            throw ParseError(description: "address '\(text)' is not understood (\(forms))")
        }
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): "tcp://\(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .tls(let host, let port): "tls://\(host.contains(":") ? "[\(host)]" : host):\(port)"
        }
    }

    /// `unix` or `tcp`, as OpenTelemetry's `network.transport` names it.
    public var transport: String {
        if case .unix = self { return "unix" }
        return "tcp"
    }
}
