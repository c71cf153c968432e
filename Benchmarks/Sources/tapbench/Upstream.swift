import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// The benchmark's gRPC methods. Messages are opaque bytes (gRPC does not care what is inside a message).
enum BenchMethod: String {
    /// Echoes the request message.
    case unary = "/tapbench.Bench/Unary"
    /// Request: three little-endian UInt64 (count, size, tailSize). Response: `count` messages of `size` bytes,
    /// then one message of `tailSize` bytes if it is not 0.
    case download = "/tapbench.Bench/Download"
    /// Request: any number of messages. Response: one message, the number of request body bytes as a UInt64.
    case upload = "/tapbench.Bench/Upload"
}

/// HTTP/2 settings shared by the upstream and the load client: large flow-control windows so that neither end
/// limits throughput (nghttpx gets the same windows in its configuration).
enum H2Tuning {
    static let streamWindow = 8 << 20
    static let connectionWindow = 32 << 20

    static func connection() -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        configuration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 1000),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 1 << 16),
        ]
        configuration.targetWindowSize = connectionWindow
        configuration.maximumBufferedControlFrames = 100_000
        return configuration
    }

    static func stream() -> NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = streamWindow
        configuration.outboundBufferSizeHighWatermark = 1 << 20
        configuration.outboundBufferSizeLowWatermark = 256 << 10
        return configuration
    }

    /// A gRPC message: 5-byte prefix and `size` payload bytes.
    static func message(size: Int, fill: UInt8 = 0x61) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: size + 5)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(size))
        buffer.writeRepeatingByte(fill, count: size)
        return buffer
    }
}

/// A minimal, fast gRPC server for the benchmark (NIOHTTP2, one stream channel per call).
enum Upstream {
    static func run(unixPath: String?, tcpPort: Int?, threads: Int) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .server, connectionConfiguration: H2Tuning.connection(),
                        streamConfiguration: H2Tuning.stream()
                    ) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(UpstreamCallHandler())
                        }
                    }
                }
            }
        var channels: [Channel] = []
        if let unixPath {
            _ = unlink(unixPath)
            channels.append(try bootstrap.bind(unixDomainSocketPath: unixPath).wait())
        }
        if let tcpPort {
            channels.append(try bootstrap.bind(host: "127.0.0.1", port: tcpPort).wait())
        }
        print("READY", channels.compactMap { $0.localAddress.map { "\($0)" } }.joined(separator: " "))
        fflush(stdout)
        for channel in channels { try channel.closeFuture.wait() }
    }
}

/// Serves one call on one HTTP/2 stream.
final class UpstreamCallHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    static let responseHeaders = HPACKHeaders([(":status", "200"), ("content-type", "application/grpc")])
    static let okTrailers = HPACKHeaders([("grpc-status", "0")])

    private var method: BenchMethod?
    private var body = ByteBuffer()
    private var uploaded = 0
    private var finished = false
    // Download state.
    private var remaining = 0
    private var message = ByteBuffer()
    private var tail: ByteBuffer?
    private var pumping = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if method == nil {
                method = headers.headers.first(name: ":path").flatMap(BenchMethod.init(rawValue:))
            }
            if headers.endStream { finish(context) }
        case .data(let payload):
            if case .byteBuffer(var bytes) = payload.data {
                if method == .upload {
                    uploaded += bytes.readableBytes
                } else {
                    body.writeBuffer(&bytes)
                }
            }
            if payload.endStream { finish(context) }
        default:
            break
        }
    }

    private func finish(_ context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        guard let method else {
            let trailers = HPACKHeaders([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12")])
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
            return
        }
        context.write(wrapOutboundOut(.headers(.init(headers: Self.responseHeaders))), promise: nil)
        switch method {
        case .unary:
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(body)))), promise: nil)
            endCall(context)
        case .upload:
            var reply = ByteBufferAllocator().buffer(capacity: 13)
            reply.writeInteger(UInt8(0))
            reply.writeInteger(UInt32(8))
            reply.writeInteger(UInt64(uploaded), endianness: .little)
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(reply)))), promise: nil)
            endCall(context)
        case .download:
            body.moveReaderIndex(forwardBy: min(5, body.readableBytes))
            let count = body.readInteger(endianness: .little, as: UInt64.self) ?? 0
            let size = body.readInteger(endianness: .little, as: UInt64.self) ?? 0
            let tailSize = body.readInteger(endianness: .little, as: UInt64.self) ?? 0
            remaining = Int(count)
            message = H2Tuning.message(size: Int(size))
            tail = tailSize > 0 ? H2Tuning.message(size: Int(tailSize), fill: 0x62) : nil
            pumping = true
            pump(context)
        }
    }

    private func pump(_ context: ChannelHandlerContext) {
        while remaining > 0, context.channel.isWritable {
            remaining -= 1
            context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(message)))), promise: nil)
        }
        if remaining == 0 {
            pumping = false
            if let tail {
                context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(tail)))), promise: nil)
            }
            endCall(context)
        } else {
            context.flush()
        }
    }

    private func endCall(_ context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: Self.okTrailers, endStream: true))), promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if pumping, context.channel.isWritable { pump(context) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

#if canImport(Glibc)
import Glibc
#endif
