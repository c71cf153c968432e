/// Where OTLP/HTTP trace requests go, parsed from `--otlp URL`.
///
/// Like `OTEL_EXPORTER_OTLP_ENDPOINT`, the URL is the collector's base (`http://127.0.0.1:4318`) and the signal path
/// `/v1/traces` is appended; a URL that already ends in `/v1/traces` is used as it is.
public struct OTLPEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// Why `--otlp` was not understood, phrased for the user.
    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Host name or address (IPv6 without brackets).
    public var host: String
    /// TCP port.
    public var port: Int
    /// Request path, starting with `/`.
    public var path: String

    /// An endpoint from its parts.
    public init(host: String, port: Int, path: String = "/v1/traces") {
        self.host = host
        self.port = port
        self.path = path
    }

    /// Parses `http://host[:port][/base]`. The port defaults to 80.
    public init(parsing text: String) throws(ParseError) {
        let usage = "use http://host:port, for example http://127.0.0.1:4318 (OTLP/HTTP)"
        guard text.hasPrefix("http://") else {
            if text.hasPrefix("https://") {
                throw ParseError(
                    description:
                        "--otlp '\(text)': https is not supported; send to a local collector or Jaeger over http")
            }
            throw ParseError(description: "--otlp '\(text)': \(usage)")
        }
        let rest = text.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        var base = String(rest.dropFirst(authority.count))
        guard !base.contains("?"), !base.contains("#") else {
            throw ParseError(description: "--otlp '\(text)': a query or fragment is not allowed; \(usage)")
        }
        guard !authority.contains("@") else {
            throw ParseError(description: "--otlp '\(text)': credentials in the URL are not supported")
        }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                throw ParseError(description: "--otlp '\(text)': unclosed '[' in the host")
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                portText = after.dropFirst()
            } else if !after.isEmpty {
                throw ParseError(description: "--otlp '\(text)': \(usage)")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw ParseError(description: "--otlp '\(text)': no host; \(usage)") }
        var port = 80
        if let portText {
            guard let parsed = Int(portText), (1...65535).contains(parsed) else {
                throw ParseError(description: "--otlp '\(text)': port must be 1-65535; \(usage)")
            }
            port = parsed
        }
        while base.hasSuffix("/") { base.removeLast() }
        if !base.hasSuffix("/v1/traces") { base += "/v1/traces" }
        self.init(host: String(host), port: port, path: base)
    }

    /// The `Host` header value.
    var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == 80 ? name : "\(name):\(port)"
    }

    /// `http://host:port/path`.
    public var description: String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)\(path)" }
}

/// Which OTLP/HTTP body encoding to send.
public enum OTLPEncoding: String, Sendable, CaseIterable {
    /// `application/x-protobuf`, the OTLP default.
    case protobuf
    /// `application/json` (OTLP/JSON).
    case json

    /// The `Content-Type` header value.
    var contentType: String {
        switch self {
        case .protobuf: return "application/x-protobuf"
        case .json: return "application/json"
        }
    }
}
