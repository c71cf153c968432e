import NIOCore
import NIOHTTP1
import NIOPosix
import TapTrace

/// What came back from one OTLP/HTTP POST.
struct OTLPHTTPResponse: Sendable {
    /// The HTTP status code.
    var status: Int
    /// `Retry-After`, when the server sent one.
    var retryAfter: String?
    /// The start of the body (up to 4 KiB), for error logs.
    var bodyPrefix: String
}

/// Why a POST produced no HTTP answer.
enum OTLPHTTPError: Error, CustomStringConvertible {
    /// No TCP connection (refused, unreachable, or the connect timed out).
    case connect(String)
    /// The answer did not arrive within the request timeout.
    case timeout
    /// The connection closed or failed before a full answer.
    case connection(String)

    var description: String {
        switch self {
        case .connect(let reason): return "cannot connect: \(reason)"
        case .timeout: return "no answer within the request timeout"
        case .connection(let reason): return "connection failed: \(reason)"
        }
    }
}

/// A minimal HTTP/1.1 client for OTLP/HTTP: one POST per connection (`Connection: close`), non-blocking on NIO.
///
/// Export requests are few (one per batch, at most a few per second), so a fresh connection each time keeps the
/// client stateless: a backend that restarts or dies costs one refused connect, never a stale pooled socket.
/// Everything runs on an event loop without blocking; the caller awaits the answer off the loops.
struct OTLPHTTPClient: Sendable {
    let endpoint: OTLPEndpoint
    let group: any EventLoopGroup
    /// Limit for the TCP connect.
    var connectTimeout: TimeAmount = .seconds(2)

    /// POSTs `body` to the endpoint; throws ``OTLPHTTPError`` when there is no complete answer before `timeout`.
    func post(body: [UInt8], contentType: String, timeout: Duration) async throws -> OTLPHTTPResponse {
        let loop = group.next()
        let promise = loop.makePromise(of: OTLPHTTPResponse.self)
        let channel: any Channel
        do {
            let connectLimit = min(connectTimeout, TimeAmount(timeout))
            channel = try await ClientBootstrap(group: loop)
                .connectTimeout(connectLimit)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(OTLPResponseHandler(promise: promise))
                    }
                }
                .connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            promise.fail(OTLPHTTPError.connect("\(error)"))
            throw OTLPHTTPError.connect("\(error)")
        }
        let timer = loop.scheduleTask(in: TimeAmount(timeout)) {
            promise.fail(OTLPHTTPError.timeout)
            channel.close(promise: nil)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: endpoint.hostHeader)
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "User-Agent", value: "gitaly-tap/\(GitalyTapVersion.current)")
        headers.add(name: "Connection", value: "close")
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: endpoint.path, headers: headers)
        let buffer = channel.allocator.buffer(bytes: body)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil)).whenFailure { error in
            promise.fail(OTLPHTTPError.connection("\(error)"))
        }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            promise.fail(CancellationError())
            channel.close(promise: nil)
        }
    }
}

/// Collects one HTTP response and completes the promise; a close before the end fails it.
private final class OTLPResponseHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<OTLPHTTPResponse>
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []
    private static let bodyLimit = 4096

    init(promise: EventLoopPromise<OTLPHTTPResponse>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
        case .body(let buffer):
            let room = Self.bodyLimit - body.count
            if room > 0 { body.append(contentsOf: buffer.readableBytesView.prefix(room)) }
        case .end:
            guard let head else { return }
            promise.succeed(
                OTLPHTTPResponse(
                    status: Int(head.status.code), retryAfter: head.headers.first(name: "Retry-After"),
                    bodyPrefix: String(decoding: body, as: UTF8.self)))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(OTLPHTTPError.connection("closed before a complete answer"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(OTLPHTTPError.connection("\(error)"))
        context.close(promise: nil)
    }
}
