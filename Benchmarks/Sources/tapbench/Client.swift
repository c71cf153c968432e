import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// Where a benchmark client connects.
enum Endpoint: CustomStringConvertible {
    case unix(String)
    case tcp(Int)

    var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case .tcp(let port): return "tcp://127.0.0.1:\(port)"
        }
    }
}

struct CallFailure: Error, CustomStringConvertible {
    var description: String
}

/// Monotonic nanoseconds.
@inline(__always)
func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// One HTTP/2 client connection of the load client. All its work runs on its channel's event loop.
final class BenchConnection {
    let channel: Channel
    private let multiplexer: NIOHTTP2Handler.StreamMultiplexer

    private init(channel: Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer) {
        self.channel = channel
        self.multiplexer = multiplexer
    }

    static func connect(to endpoint: Endpoint, on loop: EventLoop) -> EventLoopFuture<BenchConnection> {
        final class Box { var multiplexer: NIOHTTP2Handler.StreamMultiplexer? }
        let box = Box()
        let bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    box.multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: H2Tuning.connection(),
                        streamConfiguration: H2Tuning.stream()
                    ) { stream in stream.eventLoop.makeSucceededVoidFuture() }
                }
            }
        let connected: EventLoopFuture<Channel>
        switch endpoint {
        case .unix(let path): connected = bootstrap.connect(unixDomainSocketPath: path)
        case .tcp(let port): connected = bootstrap.connect(host: "127.0.0.1", port: port)
        }
        return connected.map { BenchConnection(channel: $0, multiplexer: box.multiplexer!) }
    }

    /// Starts one call; `done` gets the response body bytes received (or the failure), on the event loop.
    func call(_ kind: CallKind, done: @escaping (Result<Int, Error>) -> Void) {
        multiplexer.createStreamChannel(promise: nil) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(ClientCallHandler(kind: kind, done: done))
            }
        }
    }

    func close() { channel.close(promise: nil) }
}

/// What a call sends.
enum CallKind {
    /// One request message (prefix included), sent with end of stream.
    case unary(ByteBuffer)
    /// A download request message (prefix included).
    case download(ByteBuffer)
    /// `count` copies of `message` (prefix included), then end of stream.
    case upload(message: ByteBuffer, count: Int)

    var method: BenchMethod {
        switch self {
        case .unary: return .unary
        case .download: return .download
        case .upload: return .upload
        }
    }

    static func downloadRequest(count: Int, size: Int, tailSize: Int) -> CallKind {
        var buffer = ByteBufferAllocator().buffer(capacity: 29)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(24))
        buffer.writeInteger(UInt64(count), endianness: .little)
        buffer.writeInteger(UInt64(size), endianness: .little)
        buffer.writeInteger(UInt64(tailSize), endianness: .little)
        return .download(buffer)
    }
}

final class ClientCallHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private static var headersByMethod: [String: HPACKHeaders] = [:]

    static func requestHeaders(_ method: BenchMethod) -> HPACKHeaders {
        HPACKHeaders([
            (":method", "POST"), (":scheme", "http"), (":path", method.rawValue), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "tapbench"),
        ])
    }
    private static let unaryHeaders = requestHeaders(.unary)
    private static let downloadHeaders = requestHeaders(.download)
    private static let uploadHeaders = requestHeaders(.upload)

    private let kind: CallKind
    private var done: ((Result<Int, Error>) -> Void)?
    private var received = 0
    private var started = false
    private var sent = 0
    private var ended = false
    private var status: String?

    init(kind: CallKind, done: @escaping (Result<Int, Error>) -> Void) {
        self.kind = kind
        self.done = done
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        switch kind {
        case .unary(let request):
            context.write(wrapOutboundOut(.headers(.init(headers: Self.unaryHeaders))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(request), endStream: true))), promise: nil)
        case .download(let request):
            context.write(wrapOutboundOut(.headers(.init(headers: Self.downloadHeaders))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(request), endStream: true))), promise: nil)
        case .upload:
            context.write(wrapOutboundOut(.headers(.init(headers: Self.uploadHeaders))), promise: nil)
            pump(context)
        }
    }

    private func pump(_ context: ChannelHandlerContext) {
        guard case .upload(let message, let count) = kind, !ended else { return }
        while sent < count, context.channel.isWritable {
            sent += 1
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(message)))), promise: nil)
        }
        if sent == count {
            ended = true
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))), promise: nil)
        }
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pump(context) }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if let value = headers.headers.first(name: "grpc-status") { status = value }
            if headers.endStream { complete(context) }
        case .data(let payload):
            received += payload.data.readableBytes
            if payload.endStream { complete(context) }
        default:
            break
        }
    }

    private func complete(_ context: ChannelHandlerContext) {
        guard let done else { return }
        self.done = nil
        if status == "0" {
            done(.success(received))
        } else {
            done(.failure(CallFailure(description: "grpc-status \(status ?? "missing")")))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let done {
            self.done = nil
            done(.failure(CallFailure(description: "stream closed before the trailers")))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let done {
            self.done = nil
            done(.failure(error))
        }
        context.close(promise: nil)
    }
}

#if canImport(Glibc)
import Glibc
#endif
