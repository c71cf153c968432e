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

    /// The recorded client calls of `path`.
    func calls(path: String) -> [RecordedCall] { byMethod[path] ?? [] }

    /// The least used of `fitting` (not empty), counted as used once more.
    func take(_ fitting: [RecordedCall]) -> RecordedCall {
        uses.withLock { uses -> RecordedCall in
            let best = fitting.min { uses[$0.id, default: 0] < uses[$1.id, default: 0] }!
            uses[best.id, default: 0] += 1
            return best
        }
    }

    /// How many of `call`'s response messages its server had sent before the client's request message number
    /// `received + 1` (all of them once every request message has arrived).
    static func dueResponses(_ call: RecordedCall, received: Int) -> Int {
        guard received < call.requests.count else { return call.responses.count }
        let next = call.requests[received].time
        return call.responses.prefix { $0.time < next }.count
    }

    static func sameMessage(_ recorded: RecordedMessage, _ got: ByteBuffer) -> Bool {
        guard recorded.length == got.readableBytes else { return false }
        let stored = recorded.payload.readableBytesView
        return stored.elementsEqual(got.readableBytesView.prefix(stored.count))
    }

    private static func sameRequests(_ recorded: [RecordedMessage], _ got: [ByteBuffer]) -> Bool {
        recorded.count == got.count && zip(recorded, got).allSatisfy { sameMessage($0, $1) }
    }
}

/// `gitaly-tap serve`: a stand-in Gitaly that answers with a recording's answers.
///
/// Speaks HTTP/2 itself (NIOHTTP2). A call is answered once its request has ended: recorded response headers,
/// messages and trailers, or a reset when the recorded call was reset. A call whose recorded server answered while
/// the request was still open (ping-pong: `SSHReceivePack`'s ref advertisement, a bidi exchange) is answered the same
/// way as it goes: after each request message, the responses recorded before the next one. Calls with no fitting
/// recording get UNIMPLEMENTED with a message that says what was missing.
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

/// Answers one call on its stream: once the request has ended, or message by message for a ping-pong call.
final class StandInStreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var collector = GRPCStreamCollector()
    private let answers: RecordedAnswers
    private let logger: Logger
    /// The recorded call answering a ping-pong call while its request is open, and what of it was sent.
    private var interleaved: RecordedCall?
    private var sentResponses = 0
    /// Request messages of the ping-pong call already compared with the recorded ones.
    private var verifiedRequests = 0
    /// Before a ping-pong call is chosen: the recorded calls whose request messages so far are the ones received
    /// (narrowed message by message, so a long client stream costs one comparison per message and candidate).
    private var candidates: [RecordedCall]?
    /// Set when the answer is complete (trailers or a status sent): later frames are ignored.
    private var answered = false

    init(answers: RecordedAnswers, logger: Logger) {
        self.answers = answers
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        let ended = collector.receive(unwrapInboundIn(data))
        let request = collector.collected
        guard request.reset == nil else { return }
        let path = request.headers?.first(name: ":path") ?? ""
        if !ended {
            if request.malformed == nil { answerSoFar(path: path, requests: request.messages, context: context) }
            return
        }
        if let call = interleaved {
            // The rest of a ping-pong call: the request must have been the recorded one to the end.
            guard request.malformed == nil, verify(request.messages, against: call),
                request.messages.count == call.requests.count
            else {
                diverged(call, got: request.messages.count, context: context)
                return
            }
            play(call, context: context)
            return
        }
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

    /// While the request is open: sends the responses a ping-pong call's recording had sent by this point.
    private func answerSoFar(path: String, requests: [ByteBuffer], context: ChannelHandlerContext) {
        if interleaved == nil {
            var fitting = candidates ?? answers.calls(path: path)
            guard !fitting.isEmpty else { return }
            // Narrow by the messages that arrived since the last frame.
            while verifiedRequests < requests.count {
                let index = verifiedRequests
                fitting.removeAll {
                    index >= $0.requests.count || !RecordedAnswers.sameMessage($0.requests[index], requests[index])
                }
                verifiedRequests += 1
            }
            candidates = fitting
            // A recorded call that went on with more request messages, and whose server answered before the next one.
            let answering = fitting.filter {
                $0.requests.count > requests.count && RecordedAnswers.dueResponses($0, received: requests.count) > 0
            }
            guard !answering.isEmpty else { return }
            interleaved = answers.take(answering)
            candidates = nil
        }
        guard let call = interleaved else { return }
        guard verify(requests, against: call) else {
            diverged(call, got: requests.count, context: context)
            return
        }
        let due = RecordedAnswers.dueResponses(call, received: requests.count)
        guard due > sentResponses else { return }
        if let cut = call.responses[sentResponses..<due].firstIndex(where: \.truncated) {
            writeCutStatus(call, cut, context: context)
            return
        }
        if sentResponses == 0 {
            context.write(
                wrapOutboundOut(.headers(.init(headers: Self.headers(call.responseHeaders ?? [], status: true)))),
                promise: nil)
        }
        for message in call.responses[sentResponses..<due] { writeMessage(message, context: context) }
        sentResponses = due
        context.flush()
    }

    /// Compares the request messages not compared yet with the recorded call's; false at the first difference or
    /// when there are more than it had.
    private func verify(_ requests: [ByteBuffer], against call: RecordedCall) -> Bool {
        while verifiedRequests < requests.count {
            guard verifiedRequests < call.requests.count,
                RecordedAnswers.sameMessage(call.requests[verifiedRequests], requests[verifiedRequests])
            else { return false }
            verifiedRequests += 1
        }
        return true
    }

    /// The client of a ping-pong call sent something the recording did not have: end the call with a status that
    /// says where (the responses already sent stay sent).
    private func diverged(_ call: RecordedCall, got: Int, context: ChannelHandlerContext) {
        let message =
            "gitaly-tap serve: the request of \(call.path) left the recorded call after \(got) message(s) "
            + "(the recording has \(call.requests.count)); answers already sent were the recorded ones"
        logger.info("request differs from the recorded call", metadata: ["path": "\(call.path)"])
        end(code: 12, message: message, context: context)
    }

    /// Ends the call with a status of the stand-in's own: Trailers-Only when nothing was sent yet, else trailers
    /// after the responses already sent.
    private func end(code: Int, message: String, context: ChannelHandlerContext) {
        guard sentResponses > 0 else {
            writeStatusOnly(context: context, code: code, message: message)
            return
        }
        answered = true
        let trailers = HPACKHeaders([("grpc-status", "\(code)"), ("grpc-message", Self.percentEncode(message))])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: trailers, endStream: true))), promise: nil)
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
        answered = true
        let headers = HPACKHeaders(
            pseudo: [(":status", "200")],
            regular: [
                ("content-type", "application/grpc"), ("grpc-status", "\(code)"),
                ("grpc-message", Self.percentEncode(message)),
            ])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
    }

    private func writeMessage(_ message: RecordedMessage, context: ChannelHandlerContext) {
        let framed = GRPCHTTP2Settings.framed(message.payload, compressed: message.compressed)
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(framed)))), promise: nil)
    }

    private func writeCutStatus(_ call: RecordedCall, _ cut: Int, context: ChannelHandlerContext) {
        let m = call.responses[cut]
        let message =
            "gitaly-tap serve: recorded response message \(cut) of \(call.path) was cut at the recording cap "
            + "(\(m.payload.readableBytes) of \(m.length) bytes stored)"
        end(code: 15, message: message, context: context)
    }

    /// Plays the recorded answer from where it stands (`sentResponses` messages, and the headers when any, already
    /// went out for a ping-pong call).
    private func play(_ call: RecordedCall, context: ChannelHandlerContext) {
        answered = true
        let rest = call.responses[sentResponses...]
        if let cut = rest.firstIndex(where: \.truncated) {
            writeCutStatus(call, cut, context: context)
            return
        }
        let headersSent = sentResponses > 0
        guard let trailers = call.trailers else {
            if case .reset(let by, _)? = call.end, by == .clientToServer {
                // The recorded client gave up (cancelled, deadline): send what it got and wait for its reset.
                if let headers = call.responseHeaders, !headersSent {
                    context.write(
                        wrapOutboundOut(.headers(.init(headers: Self.headers(headers, status: true)))), promise: nil)
                }
                for message in rest { writeMessage(message, context: context) }
                context.flush()
            } else if case .reset(let by, let code)? = call.end, by == .serverToClient {
                context.writeAndFlush(wrapOutboundOut(.rstStream(HTTP2ErrorCode(networkCode: Int(code)))), promise: nil)
            } else {
                end(
                    code: 14,
                    message:
                        "gitaly-tap serve: the recorded call of \(call.path) ended without a status (\(SessionReport.endName(call.end)))",
                    context: context)
            }
            return
        }
        if !headersSent, call.trailersOnly || call.responseHeaders == nil {
            let headers = Self.headers(trailers, status: true)
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
            return
        }
        if !headersSent {
            context.write(
                wrapOutboundOut(.headers(.init(headers: Self.headers(call.responseHeaders ?? [], status: true)))),
                promise: nil)
        }
        for message in rest { writeMessage(message, context: context) }
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
