import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import TapRecord
import TapWire

/// Settings of `gitaly-tap replay`.
public struct ReplayOptions: Sendable {
    public var target: TapAddress
    /// Multiple of the recorded pace (1 = as recorded); nil sends as fast as the concurrency allows.
    public var rate: Double?
    /// Calls in flight at once.
    public var concurrency: Int = 16
    /// Signs `authorization` per call; without it no `authorization` is sent.
    public var token: GitalyToken?
    /// A call without an answer after this long is abandoned (its stream closed) and reported.
    public var callTimeout: TimeAmount = .seconds(120)
    /// For a `tls://` target: the CA to verify its certificate with (`upstreamCAPath`) and the name to expect.
    public var tls = TLSSettings()
    /// Called after each answer with the number of calls answered so far and the number to send (skipped calls
    /// are not counted), for progress lines on long replays.
    public var onAnswer: (@Sendable (_ answered: Int, _ toSend: Int) -> Void)?

    public init(target: TapAddress) {
        self.target = target
    }
}

/// Why a replay could not run at all.
public struct ReplayError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// One recorded call and what replaying it gave.
public struct ReplayOutcome: Sendable {
    public var call: RecordedCall
    /// Nil when the call was not sent (`skipped` says why).
    public var answer: ReplayAnswer?
    public var skipped: String?
    public var differences: [String]

    /// Sent and answered as recorded.
    public var matched: Bool { skipped == nil && differences.isEmpty }
}

/// Sends a recording's calls to a Gitaly (or anything speaking its protocol) and compares the answers.
///
/// The calls go out on one HTTP/2 connection (NIOHTTP2, the tap's own client), in recorded order, with their
/// recorded metadata (withheld values are not sent; `authorization` is signed anew when a token is given), at the
/// recorded pace times `rate` or as fast as `concurrency` allows.
public enum SessionReplayer {
    /// Replays `session` and returns one outcome per recorded client call, in recorded order.
    ///
    /// - Throws: `ReplayError` when the target cannot be reached.
    public static func run(_ session: RecordedSession, options: ReplayOptions, group: any EventLoopGroup) async throws
        -> [ReplayOutcome]
    {
        let calls = session.calls.filter { !$0.fromGitaly }
        var outcomes = calls.map { ReplayOutcome(call: $0, answer: nil, skipped: nil, differences: []) }
        for i in outcomes.indices {
            outcomes[i].skipped = skipReason(outcomes[i].call)
        }
        guard outcomes.contains(where: { $0.skipped == nil }) else { return outcomes }
        let (channel, multiplexer) = try await connect(options.target, tls: options.tls, group: group)
        defer { channel.close(promise: nil) }
        let origin = calls.first?.startTime ?? 0
        let clock = ContinuousClock()
        let start = clock.now
        let toSend = outcomes.count { $0.skipped == nil }
        var answered = 0
        try await withThrowingTaskGroup(of: (Int, ReplayAnswer).self) { tasks in
            var running = 0
            for i in outcomes.indices where outcomes[i].skipped == nil {
                if running >= max(1, options.concurrency), let (j, answer) = try await tasks.next() {
                    outcomes[j].answer = answer
                    running -= 1
                    answered += 1
                    options.onAnswer?(answered, toSend)
                }
                let call = outcomes[i].call
                if let rate = options.rate, rate > 0 {
                    let offset = Double(call.startTime >= origin ? call.startTime - origin : 0) / rate
                    try await Task.sleep(until: start + .nanoseconds(Int64(offset)), clock: clock)
                }
                let written = channel.eventLoop.makePromise(of: Void.self)
                tasks.addTask {
                    (
                        i,
                        await send(
                            call, multiplexer: multiplexer, loop: channel.eventLoop, options: options, written: written)
                    )
                }
                // The next call's stream is opened only once this one's request is queued on the connection, so the
                // calls reach the target in recorded order even when many are in flight.
                try? await written.futureResult.get()
                running += 1
            }
            for try await (j, answer) in tasks {
                outcomes[j].answer = answer
                answered += 1
                options.onAnswer?(answered, toSend)
            }
        }
        for i in outcomes.indices {
            if let answer = outcomes[i].answer {
                outcomes[i].differences = CallComparison.differences(recorded: outcomes[i].call, replayed: answer)
            }
        }
        return outcomes
    }

    /// Why `call` cannot be sent as recorded, or nil.
    static func skipReason(_ call: RecordedCall) -> String? {
        if call.requestHeader("gitaly-sidechannel-id") != nil {
            return "its data travelled in a sidechannel, which needs a backchannel connection (not replayed yet)"
        }
        if let cut = call.requests.firstIndex(where: \.truncated) {
            return
                "request message \(cut) was cut at the recording cap (\(call.requests[cut].payload.readableBytes) of \(call.requests[cut].length) bytes stored)"
        }
        if call.requestEndTime == nil { return "the recording does not hold the end of its request" }
        if call.requests.contains(where: \.compressed) { return "its request messages are compressed" }
        return nil
    }

    static func connect(_ target: TapAddress, tls: TLSSettings, group: any EventLoopGroup) async throws -> (
        any Channel, NIOHTTP2Handler.StreamMultiplexer
    ) {
        var clientTLS: (NIOSSLContext, String?)?
        if case .tls(let host, _) = target {
            do {
                clientTLS = (try tls.clientContext(), tls.serverName(for: host))
            } catch {
                throw ReplayError(description: error.description)
            }
        }
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let (context, name) = clientTLS {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: context, serverHostname: name))
                        try channel.pipeline.syncOperations.addHandler(TLSHandshakeWaiter())
                    }
                    let multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: GRPCHTTP2Settings.connection,
                        streamConfiguration: GRPCHTTP2Settings.stream,
                        inboundStreamInitializer: { $0.close() })
                    try channel.pipeline.syncOperations.addHandler(MultiplexerHolder(multiplexer))
                }
            }
        let channel: any Channel
        do {
            switch target {
            case .unix(let path): channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            case .tcp(let host, let port), .tls(let host, let port):
                channel = try await bootstrap.channelOption(.socketOption(.tcp_nodelay), value: 1).connect(
                    host: host, port: port
                ).get()
            }
        } catch {
            throw ReplayError(description: "cannot connect to \(target): \(error)")
        }
        if clientTLS != nil {
            do {
                try await channel.pipeline.handler(type: TLSHandshakeWaiter.self).flatMap { $0.done }.get()
            } catch {
                channel.close(promise: nil)
                throw ReplayError(description: "TLS handshake with \(target) failed: \(error)")
            }
        }
        let multiplexer = try await channel.pipeline.handler(type: MultiplexerHolder.self).map { $0.multiplexer }.get()
        return (channel, multiplexer)
    }

    /// The request headers to send: recorded order, pseudo-headers rebuilt, withheld values left out.
    static func requestHeaders(_ call: RecordedCall, token: GitalyToken?) -> HPACKHeaders {
        let authority = call.requestHeader(":authority").map(\.text) ?? "localhost"
        var regular: [(String, String)] = []
        for header in call.requestHeaders where !header.name.hasPrefix(":") {
            let name = header.name.lowercased()
            if header.redacted || name == "authorization" || name == "content-length" { continue }
            regular.append((name, header.wireValue))
        }
        if let token {
            regular.append(("authorization", token.authorization(at: Int(WallClock.nowNanos() / 1_000_000_000))))
        }
        return HPACKHeaders(
            pseudo: [(":method", "POST"), (":scheme", "http"), (":path", call.path), (":authority", authority)],
            regular: regular)
    }

    /// Sends `call` on a stream of its own and collects the answer; `written` completes once the request is queued
    /// on the connection (or could not be).
    static func send(
        _ call: RecordedCall, multiplexer: NIOHTTP2Handler.StreamMultiplexer, loop: any EventLoop,
        options: ReplayOptions, written: EventLoopPromise<Void>
    ) async
        -> ReplayAnswer
    {
        let clock = ContinuousClock()
        let started = clock.now
        func elapsed() -> UInt64 {
            let d = clock.now - started
            return UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
        }
        let headers = requestHeaders(call, token: options.token)
        var cancel: ReplayStreamHandler.Cancel?
        if case .reset(let by, let code)? = call.end, by == .clientToServer, let duration = call.duration {
            cancel = .init(messages: call.responses.count, after: .nanoseconds(Int64(duration)), code: Int(code))
        }
        let messages = call.requests.map { GRPCHTTP2Settings.framed($0.payload) }
        var queued = false
        do {
            let promise = loop.makePromise(of: CollectedStream.self)
            let stream = try await multiplexer.createStreamChannel { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ReplayStreamHandler(promise: promise, cancel: cancel))
                }
            }.get()
            let answer = promise.futureResult
            let timeout = stream.eventLoop.scheduleTask(in: options.callTimeout) { stream.close(promise: nil) }
            stream.write(
                HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: messages.isEmpty)), promise: nil)
            for (i, message) in messages.enumerated() {
                stream.write(
                    HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(message), endStream: i == messages.count - 1)),
                    promise: nil)
            }
            stream.flush()
            written.succeed()
            queued = true
            let collected = try await answer.get()
            timeout.cancel()
            var failure: String?
            if collected.resetByClient {
                // Answers that arrived in the same read as the one the recorded client stopped at are not counted.
                let seen = collected.messages.prefix(cancel?.messages ?? collected.messages.count)
                return ReplayAnswer(
                    status: nil, statusMessage: "", messages: seen.map { Array($0.readableBytesView) },
                    resetByReplay: true, duration: elapsed())
            } else if let code = collected.reset {
                failure = "the target reset the stream (\(code))"
            } else if collected.lost {
                failure =
                    "the stream closed before the answer ended (timeout \(options.callTimeout) or connection lost)"
            } else if let malformed = collected.malformed {
                failure = malformed
            } else if collected.status == nil {
                failure = "the answer ended without grpc-status"
            }
            return ReplayAnswer(
                status: collected.status, statusMessage: collected.statusMessage,
                messages: collected.messages.map { Array($0.readableBytesView) }, failure: failure, duration: elapsed())
        } catch {
            if !queued { written.succeed() }
            return ReplayAnswer(status: nil, statusMessage: "", messages: [], failure: "\(error)", duration: elapsed())
        }
    }
}

/// Completes `done` when the TLS handshake has finished, or fails it with the handshake's error.
final class TLSHandshakeWaiter: ChannelInboundHandler, Sendable {
    typealias InboundIn = Any
    typealias InboundOut = Any
    private let promise = Mutex<EventLoopPromise<Void>?>(nil)
    private let future = Mutex<EventLoopFuture<Void>?>(nil)

    /// Succeeds after the handshake.
    var done: EventLoopFuture<Void> { future.withLock { $0! } }

    func handlerAdded(context: ChannelHandlerContext) {
        let p = context.eventLoop.makePromise(of: Void.self)
        promise.withLock { $0 = p }
        future.withLock { $0 = p.futureResult }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls { complete(nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        complete(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        complete(ReplayError(description: "the connection closed during the handshake"))
        context.fireChannelInactive()
    }

    private func complete(_ error: (any Error)?) {
        guard
            let p = promise.withLock({ p in
                defer { p = nil }; return p
            })
        else { return }
        if let error { p.fail(error) } else { p.succeed() }
    }
}

/// Keeps the connection's stream multiplexer findable in its pipeline.
final class MultiplexerHolder: ChannelInboundHandler, Sendable {
    typealias InboundIn = Any
    let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    init(_ multiplexer: NIOHTTP2Handler.StreamMultiplexer) { self.multiplexer = multiplexer }
}

/// Collects one replayed call's answer.
final class ReplayStreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    /// The recorded client reset its call after `messages` answers and `after` time: replay does the same.
    struct Cancel {
        var messages: Int
        var after: TimeAmount
        var code: Int
    }

    private var collector = GRPCStreamCollector()
    /// Completed once, with whatever arrived until the stream ended.
    private var promise: EventLoopPromise<CollectedStream>?
    private let cancel: Cancel?
    private var cancelDeadline: NIODeadline?

    init(promise: EventLoopPromise<CollectedStream>, cancel: Cancel? = nil) {
        self.promise = promise
        self.cancel = cancel
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let cancel else { return }
        let deadline = NIODeadline.now() + cancel.after
        cancelDeadline = deadline
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.cancelIfDue(context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if collector.receive(unwrapInboundIn(data)) {
            complete()
        } else if cancel != nil {
            cancelIfDue(context: context)
        }
    }

    /// Resets the stream as the recorded client did, once both its time and its answer count are reached.
    private func cancelIfDue(context: ChannelHandlerContext) {
        guard let cancel, let cancelDeadline, promise != nil, !collector.ended else { return }
        guard NIODeadline.now() >= cancelDeadline, collector.collected.messages.count >= cancel.messages else { return }
        if collector.resetByClient() { complete() }
        context.writeAndFlush(wrapOutboundOut(.rstStream(HTTP2ErrorCode(networkCode: cancel.code))), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if collector.close() { complete() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if collector.close() { complete() }
    }

    private func complete() {
        promise?.succeed(collector.collected)
        promise = nil
    }
}
