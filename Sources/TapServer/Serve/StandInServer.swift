import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import Synchronization
import TapRecord
import TapWire

/// What the stand-in answers to one call.
enum StandInReply: Sendable {
    /// Play back this recorded answer.
    case recorded(RecordedCall)
    /// Answer with a status of the stand-in's own (no recording fits).
    case status(code: Int, message: String)
}

/// Chooses recorded answers: a call is answered by a recorded call of the same method whose request messages are
/// the same bytes. When several fit, the least used one (the earliest among equals) answers, so a client repeating a
/// recorded sequence gets the recorded answers in order.
final class RecordedAnswers: Sendable {
    private let byMethod: [String: [RecordedCall]]
    private let uses = Mutex<[UInt64: Int]>([:])

    init(_ session: RecordedSession) {
        var byMethod: [String: [RecordedCall]] = [:]
        for call in session.calls where !call.fromGitaly {
            byMethod[call.path, default: []].append(call)
        }
        self.byMethod = byMethod
    }

    /// Number of recorded client calls.
    var count: Int { byMethod.values.reduce(0) { $0 + $1.count } }

    func reply(path: String, requests: [ByteBuffer]) -> StandInReply {
        guard let candidates = byMethod[path] else {
            return .status(code: 12, message: "gitaly-tap serve: \(path) is not in the recording")
        }
        let fitting = candidates.filter { Self.sameRequests($0.requests, requests) }
        guard !fitting.isEmpty else {
            return .status(
                code: 12,
                message: "gitaly-tap serve: no recorded call of \(path) had these request messages "
                    + "(\(candidates.count) recorded call(s) of this method differ)")
        }
        let chosen = uses.withLock { uses -> RecordedCall in
            let best = fitting.min { uses[$0.id, default: 0] < uses[$1.id, default: 0] }!
            uses[best.id, default: 0] += 1
            return best
        }
        return .recorded(chosen)
    }

    private static func sameRequests(_ recorded: [RecordedMessage], _ got: [ByteBuffer]) -> Bool {
        guard recorded.count == got.count else { return false }
        for (r, g) in zip(recorded, got) {
            guard r.length == g.readableBytes else { return false }
            let stored = r.payload.readableBytesView
            guard stored.elementsEqual(g.readableBytesView.prefix(stored.count)) else { return false }
        }
        return true
    }
}

/// `gitaly-tap serve`: a stand-in Gitaly that answers with a recording's answers.
///
/// Speaks HTTP/2 itself (NIOHTTP2). Each call is answered once its request has ended: recorded response headers,
/// messages and trailers, or a reset when the recorded call was reset. Calls with no fitting recording get
/// UNIMPLEMENTED with a message that says what was missing.
public final class StandInServer: Sendable {
    private let answers: RecordedAnswers
    private let listen: TapAddress
    private let group: any EventLoopGroup
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)
    private let tls: TLSSettings

    /// `tls` holds the certificate and key for a `tls://` listener.
    public init(
        session: RecordedSession, listen: TapAddress, group: any EventLoopGroup, logger: Logger,
        tls: TLSSettings = TLSSettings()
    ) {
        self.answers = RecordedAnswers(session)
        self.listen = listen
        self.group = group
        self.logger = logger
        self.tls = tls
    }

    /// Binds the listener; returns the bound address.
    @discardableResult
    public func start() async throws -> SocketAddress {
        let answers = self.answers
        let logger = self.logger
        let serverTLS: NIOSSLContext? = if case .tls = listen { try tls.serverContext() } else { nil }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let serverTLS {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverTLS))
                    }
                    _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .server, connectionConfiguration: GRPCHTTP2Settings.connection,
                        streamConfiguration: GRPCHTTP2Settings.stream
                    ) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(
                                StandInStreamHandler(answers: answers, logger: logger))
                        }
                    }
                }
            }
        let bound: any Channel
        do {
            switch listen {
            case .unix(let path):
                try UnixSocketPath.prepare(path)
                bound = try await bootstrap.bind(unixDomainSocketPath: path).get()
            case .tcp(let host, let port), .tls(let host, let port):
                bound = try await bootstrap.bind(host: host, port: port).get()
            }
        } catch let error as UnixSocketPath.Refusal {
            throw ProxyStartError(description: error.description)
        } catch let error as ProxyStartError {
            throw error
        } catch {
            throw ProxyStartError(description: "cannot listen on \(listen): \(error)")
        }
        channel.withLock { $0 = bound }
        logger.info(
            "serving recorded answers",
            metadata: [
                "listen": "\(listen)", "calls": "\(answers.count)",
                "bound": "\(bound.localAddress.map { "\($0)" } ?? "?")",
            ])
        return bound.localAddress!
    }

    /// Stops listening.
    public func stop() async {
        let bound = channel.withLock { $0 }
        try? await bound?.close()
        if case .unix(let path) = listen { _ = unlink(path) }
    }
}

/// Answers one call on its stream once the request has ended.
final class StandInStreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var collector = GRPCStreamCollector()
    private let answers: RecordedAnswers
    private let logger: Logger

    init(answers: RecordedAnswers, logger: Logger) {
        self.answers = answers
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard collector.receive(unwrapInboundIn(data)) else { return }
        let request = collector.collected
        guard request.reset == nil else { return }
        let path = request.headers?.first(name: ":path") ?? ""
        let reply: StandInReply =
            if let malformed = request.malformed {
                .status(code: 13, message: "gitaly-tap serve: \(malformed)")
            } else {
                answers.reply(path: path, requests: request.messages)
            }
        switch reply {
        case .status(let code, let message):
            logger.info("no recorded answer", metadata: ["path": "\(path)", "status": "\(code)"])
            writeStatusOnly(context: context, code: code, message: message)
        case .recorded(let call):
            play(call, context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOHTTP2Errors.StreamClosed {
            // The client reset the call (cancelled, or its deadline passed), as recorded clients do.
            logger.debug("the client reset the call", metadata: ["error": "\(error)"])
        } else {
            logger.warning("stream error; resetting the call", metadata: ["error": "\(error)"])
        }
        context.close(promise: nil)
    }

    private func writeStatusOnly(context: ChannelHandlerContext, code: Int, message: String) {
        let headers = HPACKHeaders(
            pseudo: [(":status", "200")],
            regular: [
                ("content-type", "application/grpc"), ("grpc-status", "\(code)"),
                ("grpc-message", Self.percentEncode(message)),
            ])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
    }

    private func play(_ call: RecordedCall, context: ChannelHandlerContext) {
        if let cut = call.responses.firstIndex(where: \.truncated) {
            let m = call.responses[cut]
            writeStatusOnly(
                context: context, code: 15,
                message:
                    "gitaly-tap serve: recorded response message \(cut) of \(call.path) was cut at the recording cap "
                    + "(\(m.payload.readableBytes) of \(m.length) bytes stored)")
            return
        }
        guard let trailers = call.trailers else {
            if case .reset(let by, _)? = call.end, by == .clientToServer {
                // The recorded client gave up (cancelled, deadline): send what it got and wait for its reset.
                if let headers = call.responseHeaders {
                    context.write(
                        wrapOutboundOut(.headers(.init(headers: Self.headers(headers, status: true)))), promise: nil)
                }
                for message in call.responses {
                    context.write(
                        wrapOutboundOut(
                            .data(
                                .init(
                                    data: .byteBuffer(
                                        GRPCHTTP2Settings.framed(message.payload, compressed: message.compressed))))),
                        promise: nil)
                }
                context.flush()
            } else if case .reset(let by, let code)? = call.end, by == .serverToClient {
                context.writeAndFlush(wrapOutboundOut(.rstStream(HTTP2ErrorCode(networkCode: Int(code)))), promise: nil)
            } else {
                writeStatusOnly(
                    context: context, code: 14,
                    message:
                        "gitaly-tap serve: the recorded call of \(call.path) ended without a status (\(SessionReport.endName(call.end)))"
                )
            }
            return
        }
        if call.trailersOnly || call.responseHeaders == nil {
            let headers = Self.headers(trailers, status: true)
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
            return
        }
        context.write(
            wrapOutboundOut(.headers(.init(headers: Self.headers(call.responseHeaders ?? [], status: true)))),
            promise: nil)
        for message in call.responses {
            context.write(
                wrapOutboundOut(
                    .data(
                        .init(
                            data: .byteBuffer(GRPCHTTP2Settings.framed(message.payload, compressed: message.compressed))
                        ))),
                promise: nil)
        }
        context.writeAndFlush(
            wrapOutboundOut(.headers(.init(headers: Self.headers(trailers, status: false), endStream: true))),
            promise: nil)
    }

    /// Recorded fields as HPACK headers, pseudo-headers first; `status` adds `:status: 200` when missing.
    static func headers(_ fields: [RecordedHeader], status: Bool) -> HPACKHeaders {
        var pseudo: [(String, String)] = []
        var regular: [(String, String)] = []
        for field in fields where !field.redacted {
            let value = field.wireValue
            if field.name.hasPrefix(":") {
                if status, field.name == ":status" { pseudo.append((field.name, value)) }
            } else {
                regular.append((field.name.lowercased(), value))
            }
        }
        if status, pseudo.isEmpty { pseudo.append((":status", "200")) }
        return HPACKHeaders(pseudo: pseudo, regular: regular)
    }

    /// gRPC's percent-encoding of `grpc-message`.
    static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            if byte >= 0x20, byte <= 0x7E, byte != UInt8(ascii: "%") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }
}

#if canImport(Glibc)
    import Glibc
#endif
