import Logging
import NIOCore
import NIOPosix
import Synchronization
import TapTrace

#if canImport(Glibc)
    import Glibc
#endif

/// Where git sends Trace2 events: `GIT_TRACE2_EVENT=af_unix:[stream:|dgram:]<path>`.
public struct Trace2SocketTarget: Sendable, Hashable, CustomStringConvertible {
    /// Socket type, as git names it.
    public enum Kind: String, Sendable {
        /// One connection per git process (git's default when the socket accepts stream connections).
        case stream
        /// One datagram per event, all processes on one socket.
        case dgram
    }

    /// Stream or datagram.
    public var kind: Kind
    /// Absolute path of the socket.
    public var path: String

    public init(kind: Kind, path: String) {
        self.kind = kind
        self.path = path
    }

    /// Parses `[stream:|dgram:]/abs/path` (git's own spelling after `af_unix:`, which is also accepted).
    public init(parsing text: String) throws(Trace2ConfigurationError) {
        var rest = Substring(text)
        if rest.hasPrefix("af_unix:") { rest = rest.dropFirst("af_unix:".count) }
        var kind = Kind.stream
        if rest.hasPrefix("stream:") {
            rest = rest.dropFirst("stream:".count)
        } else if rest.hasPrefix("dgram:") {
            kind = .dgram
            rest = rest.dropFirst("dgram:".count)
        }
        guard rest.hasPrefix("/") else {
            throw Trace2ConfigurationError(
                description:
                    "--trace2-socket '\(text)': git only accepts an absolute path, e.g. /run/gitaly-tap/trace2.sock or dgram:/run/gitaly-tap/trace2.dgram"
            )
        }
        guard rest.utf8.count < 108 else {
            throw Trace2ConfigurationError(
                description: "--trace2-socket '\(text)': a unix socket path must be shorter than 108 bytes")
        }
        self.kind = kind
        self.path = String(rest)
    }

    /// The value for `GIT_TRACE2_EVENT`.
    public var gitTarget: String { "af_unix:\(kind.rawValue):\(path)" }

    public var description: String { gitTarget }
}

/// A Trace2 option that cannot be used, phrased for the user.
public struct Trace2ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// Listens on a unix stream socket for git's Trace2 events (`af_unix:stream:`; datagrams go to
/// ``Trace2DatagramReceiver``).
///
/// Every connection is accepted at once (git opens one per process, and a parent that waits for a child would
/// deadlock against a collector that served one connection at a time); each connection has its own line parser,
/// and its end finishes the processes it carried.
public final class Trace2SocketListener: Sendable {
    /// Where it listens.
    public let target: Trace2SocketTarget
    private let collector: Trace2Collector
    private let group: any EventLoopGroup
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])

    public init(target: Trace2SocketTarget, collector: Trace2Collector, group: any EventLoopGroup, logger: Logger) {
        self.target = target
        self.collector = collector
        self.group = group
        self.logger = logger
    }

    /// Connections open now.
    public var openConnections: Int { connections.withLock { $0.count } }

    /// Binds the socket (replacing a stale socket file, never anything else) and starts accepting.
    public func start() async throws(Trace2ConfigurationError) {
        let path = target.path
        do {
            try UnixSocketPath.prepare(path)
        } catch {
            throw Trace2ConfigurationError(
                description: "--trace2-socket: " + error.description.replacing("--listen", with: "--trace2-socket"))
        }
        let collector = self.collector
        let bound: any Channel
        do {
            switch target.kind {
            case .stream:
                bound = try await ServerBootstrap(group: group)
                    .serverChannelOption(.backlog, value: 4096)
                    .childChannelInitializer { [self] child in
                        self.track(child)
                        return child.eventLoop.makeCompletedFuture {
                            try child.pipeline.syncOperations.addHandler(Trace2StreamHandler(collector: collector))
                        }
                    }
                    .bind(unixDomainSocketPath: path).get()
            case .dgram:
                throw Trace2ConfigurationError(description: "--trace2-socket: dgram targets use Trace2DatagramReceiver")
            }
            try UnixSocketPath.setGroupAccessible(path)
        } catch let error as Trace2ConfigurationError {
            throw error
        } catch let error as UnixSocketPath.Refusal {
            throw Trace2ConfigurationError(
                description: "--trace2-socket: " + error.description.replacing("--listen", with: "--trace2-socket"))
        } catch {
            throw Trace2ConfigurationError(description: "--trace2-socket: cannot listen on \(path): \(error)")
        }
        channel.withLock { $0 = bound }
        logger.info("listening for Trace2", metadata: ["trace2_target": "\(target.gitTarget)"])
    }

    /// Stops accepting, closes open connections (their processes end as they are) and removes the socket file.
    public func stop() async {
        let server = channel.withLock { c -> (any Channel)? in
            defer { c = nil }
            return c
        }
        try? await server?.close()
        // Connections of processes that already ended close by themselves once their last bytes are read: give them
        // a moment, so a stop right after a burst loses nothing. Long-lived processes are cut after that.
        let deadline = ContinuousClock.now + .seconds(1)
        while openConnections > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        for connection in connections.withLock({ Array($0.values) }) {
            try? await connection.close()
        }
        if server != nil { unlink(target.path) }
    }

    private func track(_ child: any Channel) {
        let key = ObjectIdentifier(child)
        connections.withLock { $0[key] = child }
        child.closeFuture.whenComplete { [weak self] _ in
            self?.connections.withLock { _ = $0.removeValue(forKey: key) }
        }
    }
}

/// One git process's connection: bytes → lines → events → collector.
final class Trace2StreamHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let collector: Trace2Collector
    private var parser = Trace2LineParser()
    private var stream: UInt64 = 0
    private var closed = false

    init(collector: Trace2Collector) {
        self.collector = collector
    }

    func handlerAdded(context: ChannelHandlerContext) {
        stream = collector.openStream()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        collector.ingest(parser.feed(buffer.readableBytesView), stream: stream)
    }

    func channelInactive(context: ChannelHandlerContext) {
        end(reason: "connection closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end(reason: "connection closed")
    }

    private func end(reason: String) {
        guard !closed else { return }
        closed = true
        collector.ingest(parser.finish(), stream: stream)
        collector.closeStream(stream, parser: parser.counts, reason: reason)
    }
}
