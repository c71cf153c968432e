import Logging
import NIOCore
import NIOSSL
import NIOTLS

#if canImport(Glibc)
    import Glibc
#endif

/// TLS on either side of the tap. The tap terminates the client's TLS with its own certificate and opens its own
/// TLS session to Gitaly; the bytes between the two (HTTP/2 or the backchannel magic and yamux) pass unchanged.
public struct TLSSettings: Sendable {
    /// Certificate chain (PEM) clients see on a `tls://` listener.
    public var certificatePath: String?
    /// Private key (PEM) for `certificatePath`.
    public var keyPath: String?
    /// CA bundle (PEM) that Gitaly's certificate must chain to; nil uses the system store.
    public var upstreamCAPath: String?
    /// Name to verify in Gitaly's certificate (and send as SNI); defaults to the upstream host.
    public var upstreamServerName: String?

    public init() {}

    /// Loads what `listen` and `upstream` need (certificate, key, CA), so a mistake shows before serving.
    public func check(listen: TapAddress, upstream: TapAddress) throws(ProxyStartError) {
        if case .tls = listen { _ = try serverContext() }
        if case .tls = upstream { _ = try clientContext() }
    }

    /// The server context for a `tls://` listener.
    func serverContext() throws(ProxyStartError) -> NIOSSLContext {
        guard let certificatePath, let keyPath else {
            throw ProxyStartError(description: "a tls:// listener needs --tls-cert FILE and --tls-key FILE")
        }
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
            configuration.applicationProtocols = ["h2"]
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw ProxyStartError(
                description: "cannot load the TLS certificate '\(certificatePath)' or key '\(keyPath)': \(error); check the files are PEM and match")
        }
    }

    /// The client context for a `tls://` upstream.
    func clientContext() throws(ProxyStartError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.applicationProtocols = ["h2"]
        if let upstreamCAPath {
            configuration.trustRoots = .file(upstreamCAPath)
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw ProxyStartError(description: "cannot load the upstream CA file '\(upstreamCAPath ?? "system")': \(error)")
        }
    }

    /// The name to verify for `host`: the configured one, else the host unless it is an IP address
    /// (then NIOSSL checks the certificate's IP addresses against the peer's).
    func serverName(for host: String) -> String? {
        if let upstreamServerName { return upstreamServerName }
        let isIP = (try? SocketAddress(ipAddress: host, port: 0)) != nil
        return isIP ? nil : host
    }
}

/// Logs a failed TLS handshake once, in words, then lets the splice close both sides.
final class TLSFailureLogger: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    /// Shared by the two sides of one connection (both on its event loop): the first failure is the one to
    /// report; closing the other side because of it makes no second line.
    final class Shared: @unchecked Sendable {
        var reported = false
        /// Why Gitaly's certificate failed verification when its dates tell (expired, not yet valid); BoringSSL's
        /// error only says the verification failed.
        var certificateProblem: String?
        init() {}

        /// For the upstream's TLS handler: notes a failing certificate's date problem, never changes the verdict.
        var verificationCallback: NIOSSLVerificationCallback {
            { [self] result, certificate in
                if result == .failed, certificateProblem == nil {
                    let now = time(nil)
                    if certificate.notValidAfter < now {
                        certificateProblem = "Gitaly's certificate expired on \(Self.date(certificate.notValidAfter)): renew it"
                    } else if certificate.notValidBefore > now {
                        certificateProblem =
                            "Gitaly's certificate is not valid before \(Self.date(certificate.notValidBefore)): check its dates and this host's clock"
                    }
                }
                return result
            }
        }

        static func date(_ seconds: time_t) -> String {
            var t = seconds
            var parts = tm()
            gmtime_r(&t, &parts)
            func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
            return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday)) "
                + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) UTC"
        }
    }

    private let side: String
    private let logger: Logger
    private let shared: Shared
    private var handshakeDone = false

    init(side: String, logger: Logger, shared: Shared) {
        self.side = side
        self.logger = logger
        self.shared = shared
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent { handshakeDone = true }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !shared.reported, error is NIOSSLError || error is BoringSSLError || "\(type(of: error))".contains("SSL") {
            shared.reported = true
            if handshakeDone {
                // Many gRPC stacks close TCP without a TLS close_notify: an ordinary end, not a failure.
                logger.debug("TLS session with the \(side) ended", metadata: ["error": "\(error)"])
            } else {
                // A date problem the verification callback found says more than BoringSSL's error text.
                let hint = (side == "upstream" ? shared.certificateProblem : nil) ?? Self.hint(error, side: side)
                logger.warning(
                    "TLS handshake with the \(side) failed; closing the connection",
                    metadata: ["error": "\(error)", "hint": "\(hint)"])
            }
        }
        context.fireErrorCaught(error)
    }

    static func hint(_ error: Error, side: String) -> String {
        let text = "\(error)"
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") || text.contains("uncleanShutdown") && side == "client" {
            return "is the client speaking plaintext to a tls:// address?"
        }
        if text.contains("EOF during handshake") {
            // gRPC clients that do not trust the certificate close without sending an alert: say so for clients.
            return side == "client"
                ? "the client closed the connection during the TLS handshake: a client that does not trust the tap's"
                    + " certificate does this (give clients the CA that signed --tls-cert), as does one that gave up"
                : "the upstream closed the connection during the TLS handshake"
        }
        if text.contains("failedToValidateHostname") {
            return "Gitaly's certificate is for another name: connect by that name or set --upstream-server-name"
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate") {
            return side == "upstream"
                ? "Gitaly's certificate is not trusted (signed by a CA not in --upstream-ca) or for another name: check --upstream-ca and --upstream-server-name"
                : "the client refused the tap's certificate: give clients the CA that signed --tls-cert"
        }
        return "see the error"
    }
}
