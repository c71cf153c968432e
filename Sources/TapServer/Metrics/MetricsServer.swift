import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves `/metrics` (Prometheus text) and `/health` over HTTP/1.1 on `--metrics ADDR`.
public final class MetricsServer: Sendable {
    private let metrics: TapMetrics
    private let healthy: @Sendable () -> Bool
    private let channel: NIOLockedValueBoxChannel

    /// Binds the endpoint; `healthy` decides between 200 and 503 on `/health`.
    public init(
        address: TapAddress, metrics: TapMetrics, group: any EventLoopGroup, logger: Logger,
        healthy: @escaping @Sendable () -> Bool
    ) async throws {
        self.metrics = metrics
        self.healthy = healthy
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [metrics, healthy] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(metrics: metrics, healthy: healthy))
                }
            }
        let bound: any Channel
        do {
            switch address {
            case .unix(let path):
                try UnixSocketPath.prepare(path)
                bound = try await bootstrap.bind(unixDomainSocketPath: path).get()
            case .tcp(let host, let port):
                bound = try await bootstrap.bind(host: host, port: port).get()
            case .tls:
                throw ProxyStartError(description: "--metrics takes tcp://host:port or unix:/path, not tls://")
            }
        } catch let error as ProxyStartError {
            throw error
        } catch {
            throw ProxyStartError(description: "cannot serve metrics on \(address): \(error)")
        }
        channel = NIOLockedValueBoxChannel(bound)
        logger.info("metrics endpoint listening", metadata: ["metrics": "\(address)", "bound": "\(bound.localAddress.map { "\($0)" } ?? "?")"])
    }

    /// The bound port, for tcp addresses.
    public var port: Int? { channel.value.localAddress?.port }

    public func close() async {
        try? await channel.value.close()
    }
}

/// A channel held by a Sendable wrapper (channels are thread-safe).
struct NIOLockedValueBoxChannel: Sendable {
    let value: any Channel
    init(_ value: any Channel) { self.value = value }
}

private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: TapMetrics
    private let healthy: @Sendable () -> Bool
    private var head: HTTPRequestHead?

    init(metrics: TapMetrics, healthy: @escaping @Sendable () -> Bool) {
        self.metrics = metrics
        self.healthy = healthy
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            let (status, type, body): (HTTPResponseStatus, String, String)
            switch (head.method, path) {
            case (.GET, "/metrics"):
                (status, type, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", metrics.render())
            case (.GET, "/health"), (.GET, "/healthz"):
                (status, type, body) = healthy() ? (.ok, "text/plain", "ok\n") : (.serviceUnavailable, "text/plain", "not serving\n")
            default:
                (status, type, body) = (.notFound, "text/plain", "not found: try /metrics or /health\n")
            }
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: type)
            headers.add(name: "content-length", value: String(body.utf8.count))
            if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
            let keepAlive = head.isKeepAlive
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { channel.close(promise: nil) }
            }
            self.head = nil
        }
    }
}
