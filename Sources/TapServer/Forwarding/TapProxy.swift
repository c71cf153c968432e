import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TapTrace
import TapWire

/// Settings of the forwarding proxy.
public struct ProxyConfiguration: Sendable {
    public var listen: TapAddress
    public var upstream: TapAddress
    public var limits: GRPCCallAssembler.Limits
    /// Per-direction write buffer bounds; reading stops while a side holds more than `high` unsent bytes.
    public var writeBufferLow = 128 * 1024
    public var writeBufferHigh = 512 * 1024
    public var connectTimeout: TimeAmount = .seconds(5)
    /// Certificates for `tls://` listeners and upstreams.
    public var tls = TLSSettings()

    public init(listen: TapAddress, upstream: TapAddress, limits: GRPCCallAssembler.Limits = .init()) {
        self.listen = listen
        self.upstream = upstream
        self.limits = limits
    }
}

/// Errors that stop the proxy from starting, phrased for the user.
public struct ProxyStartError: Error, CustomStringConvertible {
    public var description: String
}

/// The sidecar: accepts clients, opens one upstream connection per client and splices the two, observing both.
public final class TapProxy: Sendable {
    private let configuration: ProxyConfiguration
    private let pipeline: SpanPipeline
    private let group: any EventLoopGroup
    private let logger: Logger
    private let serverChannel = Mutex<(any Channel)?>(nil)
    private let connections = Mutex<[UInt64: any Channel]>([:])
    private let nextConnectionID = Atomic<UInt64>(1)
    private let tlsContexts = Mutex<(server: NIOSSLContext?, client: NIOSSLContext?)>((nil, nil))
    private let recorder: SessionRecorder?

    /// `recorder`, when given, gets every connection's events (`--record`); the limits must have `recordEvents` on.
    public init(
        configuration: ProxyConfiguration, pipeline: SpanPipeline, group: any EventLoopGroup, logger: Logger,
        recorder: SessionRecorder? = nil
    ) {
        self.configuration = configuration
        self.pipeline = pipeline
        self.group = group
        self.logger = logger
        self.recorder = recorder
    }

    /// True while the listener accepts connections.
    public var isListening: Bool { serverChannel.withLock { $0?.isActive ?? false } }

    /// Number of client connections currently open.
    public var openConnections: Int { connections.withLock { $0.count } }

    /// Client connections open now, by kind (`http2`, `backchannel`, `opaque`, `undetermined`).
    public var openConnectionsByKind: [String: Int] { openGauge.current }
    private let openGauge = OpenConnectionGauge()

    /// Binds the listener. Returns the bound address (useful with port 0).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let configuration = self.configuration
        let serverTLS: NIOSSLContext? = if case .tls = configuration.listen { try configuration.tls.serverContext() } else { nil }
        let clientTLS: NIOSSLContext? = if case .tls = configuration.upstream { try configuration.tls.clientContext() } else { nil }
        tlsContexts.withLock { $0 = (serverTLS, clientTLS) }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(
                .writeBufferWaterMark,
                value: .init(low: configuration.writeBufferLow, high: configuration.writeBufferHigh)
            )
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16 * 1024, maximum: 256 * 1024))
            .childChannelInitializer { [self] child in
                self.accept(child)
            }
        let channel: any Channel
        do {
            switch configuration.listen {
            case .unix(let path):
                try UnixSocketPath.prepare(path)
                channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
                try UnixSocketPath.setGroupAccessible(path)
            case .tcp(let host, let port), .tls(let host, let port):
                channel = try await bootstrap.bind(host: host, port: port).get()
            }
        } catch let error as UnixSocketPath.Refusal {
            throw ProxyStartError(description: error.description)
        } catch let error as ProxyStartError {
            throw error
        } catch {
            throw ProxyStartError(description: "cannot listen on \(configuration.listen): \(error)")
        }
        serverChannel.withLock { $0 = channel }
        logger.info(
            "listening",
            metadata: ["listen": "\(configuration.listen)", "upstream": "\(configuration.upstream)", "bound": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        return channel.localAddress!
    }

    /// Stops accepting, waits up to `drain` for open connections to finish, then closes the rest.
    public func stop(drain: Duration) async {
        let server = serverChannel.withLock { $0 }
        try? await server?.close()
        if case .unix(let path) = configuration.listen { _ = unlinkSocket(path) }
        let deadline = ContinuousClock.now + drain
        while openConnections > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        let remaining = connections.withLock { Array($0.values) }
        if !remaining.isEmpty {
            logger.warning("drain timeout: closing open connections", metadata: ["connections": "\(remaining.count)"])
        }
        for channel in remaining { try? await channel.close() }
    }

    private func accept(_ child: any Channel) -> EventLoopFuture<Void> {
        let id = nextConnectionID.wrappingAdd(1, ordering: .relaxed).oldValue
        let configuration = self.configuration
        let info = ConnectionInfo(
            id: id, transport: configuration.listen.transport, peer: Self.describe(child.remoteAddress),
            listenAddress: configuration.listen.description, upstreamAddress: configuration.upstream.description,
            startTimeUnixNano: WallClock.nowNanos())
        var connectionLogger = logger
        connectionLogger[metadataKey: "connection"] = "\(id)"
        let tap = ConnectionTap(
            info: info, pipeline: pipeline, limits: configuration.limits, logger: connectionLogger, gauge: openGauge,
            recorder: recorder)
        let (clientHandler, upstreamHandler) = SpliceHandler.pair(tap: tap)
        let loop = child.eventLoop
        let handlers = NIOLoopBound((clientHandler, upstreamHandler), eventLoop: loop)
        let (serverTLS, clientTLS) = tlsContexts.withLock { $0 }
        let tlsLog = TLSFailureLogger.Shared()
        var upstreamTLSName: String? = nil
        if case .tls(let host, _) = configuration.upstream { upstreamTLSName = configuration.tls.serverName(for: host) }
        var upstreamBootstrap = ClientBootstrap(group: loop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .channelOption(
                .writeBufferWaterMark,
                value: .init(low: configuration.writeBufferLow, high: configuration.writeBufferHigh)
            )
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16 * 1024, maximum: 256 * 1024))
            .channelInitializer { [connectionLogger, tlsLog] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let clientTLS {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(
                                context: clientTLS, serverHostname: upstreamTLSName,
                                verificationCallback: tlsLog.verificationCallback))
                        try channel.pipeline.syncOperations.addHandler(TLSFailureLogger(side: "upstream", logger: connectionLogger, shared: tlsLog))
                    }
                    try channel.pipeline.syncOperations.addHandler(handlers.value.1)
                }
            }
        if configuration.upstream.transport == "tcp" {
            upstreamBootstrap = upstreamBootstrap.channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        }
        let connect: EventLoopFuture<any Channel>
        switch configuration.upstream {
        case .unix(let path): connect = upstreamBootstrap.connect(unixDomainSocketPath: path)
        case .tcp(let host, let port), .tls(let host, let port): connect = upstreamBootstrap.connect(host: host, port: port)
        }
        let logger = connectionLogger
        return connect.flatMapThrowing { upstream in
            if let serverTLS {
                try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverTLS))
                try child.pipeline.syncOperations.addHandler(TLSFailureLogger(side: "client", logger: logger, shared: tlsLog))
            }
            try child.pipeline.syncOperations.addHandler(handlers.value.0)
            self.track(id: id, client: child, upstream: upstream)
            // Reads from the upstream were held back until the client side could take them.
            try upstream.syncOptions?.setOption(.autoRead, value: true)
        }.flatMapErrorThrowing { error in
            logger.error(
                "cannot reach upstream; closing the client connection",
                metadata: ["upstream": "\(configuration.upstream)", "error": "\(error)"])
            throw error
        }
    }

    private func track(id: UInt64, client: any Channel, upstream: any Channel) {
        connections.withLock { $0[id] = client }
        client.closeFuture.whenComplete { [self] _ in
            connections.withLock { $0[id] = nil }
        }
    }

    private static func describe(_ address: SocketAddress?) -> String {
        guard let address else { return "" }
        switch address {
        case .unixDomainSocket: return ""
        default: return "\(address.ipAddress ?? ""):\(address.port ?? 0)"
        }
    }
}

#if canImport(Glibc)
import Glibc
private func unlinkSocket(_ path: String) -> Bool { unlink(path) == 0 }
#endif
