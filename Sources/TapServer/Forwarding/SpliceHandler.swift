import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import TapWire

#if canImport(Glibc)
import Glibc
#endif

/// One half of a 1:1 byte splice between a client channel and its upstream channel.
///
/// Bytes read on this channel are written unchanged to the partner channel and, once flushed, shown to the
/// connection's tap.
/// Backpressure: this channel is read only while the partner is writable, so at most one write-buffer water mark
/// plus one read buffer is held per direction. Half-close, close and reset are mirrored to the partner.
final class SpliceHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: SpliceHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var inputClosed = false
    private var outputClosing = false
    /// True once this side's TLS handshake completed (never set on a side without TLS).
    private var tlsHandshakeCompleted = false
    /// The partner's peer half-closed while this side's TLS handshake was still running: passed on when it ends.
    private var outputCloseAwaitingHandshake = false
    /// The direction of the bytes this channel reads.
    private let readDirection: Direction
    private let tap: ConnectionTap

    private init(readDirection: Direction, tap: ConnectionTap) {
        self.readDirection = readDirection
        self.tap = tap
    }

    /// A linked pair: install `client` on the accepted channel and `upstream` on the channel to Gitaly.
    static func pair(tap: ConnectionTap) -> (client: SpliceHandler, upstream: SpliceHandler) {
        let client = SpliceHandler(readDirection: .clientToServer, tap: tap)
        let upstream = SpliceHandler(readDirection: .serverToClient, tap: tap)
        client.partner = upstream
        upstream.partner = client
        return (client, upstream)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        // The time the bytes arrived (one clock read per read cycle), not the later time they are decoded.
        if unobserved.isEmpty { readTime = WallClock.nowNanos() }
        partner?.partnerWrite(buffer)
        unobserved.append(buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Forward first, decode after: the bytes leave before the decoder walks them, so decoding is off the
        // latency path (it overlaps with the peer's work). The buffers are shared, not copied.
        partner?.partnerFlush()
        observeUnobserved()
    }

    /// Buffers forwarded in this read cycle, not yet shown to the tap (at most one cycle's reads).
    private var unobserved: [ByteBuffer] = []
    /// When the first of `unobserved` was read.
    private var readTime: UInt64 = 0

    private func observeUnobserved() {
        guard !unobserved.isEmpty else { return }
        for buffer in unobserved { tap.observe(buffer, direction: readDirection, at: readTime) }
        unobserved.removeAll(keepingCapacity: unobserved.count <= 4)
    }

    func channelInactive(context: ChannelHandlerContext) {
        observeUnobserved()
        tap.sideClosed(readDirection)
        partner?.partnerClose()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            tlsHandshakeCompleted = true
            if outputCloseAwaitingHandshake {
                outputCloseAwaitingHandshake = false
                partnerShutdownOutput()
            }
        }
        if let event = event as? ChannelEvent, case .inputClosed = event {
            observeUnobserved()
            inputClosed = true
            tap.halfClosed(readDirection)
            partner?.partnerShutdownOutput()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        observeUnobserved()
        let reset = Self.isReset(error)
        tap.failed(readDirection, error: error, reset: reset)
        if reset { partner?.partnerReset() } else { partner?.partnerClose() }
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if let partner, partner.partnerIsWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }

    // MARK: Calls from the partner, on the same event loop.

    private var partnerIsWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerWrite(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    /// The partner's peer half-closed: pass the end of stream on after everything already written.
    private func partnerShutdownOutput() {
        guard let context, !outputClosing else { return }
        if !tlsHandshakeCompleted, (try? context.pipeline.syncOperations.handler(type: NIOSSLHandler.self)) != nil {
            // swift-nio-ssl (2.37.6) buffers a half-close asked for during its handshake; a full close that follows
            // leaves its shutdown timer armed, and when the buffered half-close runs, the timer fires in a state it
            // traps on ("Cannot schedule timed out shutdown on non-shutting down handler"). The bytes written so
            // far wait for the handshake anyway; so does the half-close now.
            outputCloseAwaitingHandshake = true
            return
        }
        outputClosing = true
        context.flush()
        if inputClosed {
            // Both directions ended. NIO would turn an output close into a full close that drops pending
            // writes, so wait for them to drain first.
            closeAfterDrain(context)
        } else {
            context.close(mode: .output, promise: nil)
        }
    }

    /// The partner closed: close this side after the bytes already written have gone out, or after
    /// `lingerLimit` if its peer stopped reading (the bytes would never drain).
    private func partnerClose() {
        guard let context else { return }
        closeAfterDrain(context)
    }

    private func closeAfterDrain(_ context: ChannelHandlerContext) {
        outputCloseAwaitingHandshake = false  // a full close supersedes it
        let channel = context.channel
        let deadline = context.eventLoop.scheduleTask(in: Self.lingerLimit) {
            channel.close(promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    /// How long a closing side may take to deliver what it already accepted.
    static let lingerLimit: TimeAmount = .seconds(30)

    /// The partner's peer reset its connection: reset this one too (SO_LINGER 0 makes close send RST on TCP).
    private func partnerReset() {
        guard let context else { return }
        if let provider = context.channel as? any SocketOptionProvider {
            let channel = context.channel
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
                channel.close(promise: nil)
            }
        } else {
            context.close(promise: nil)
        }
    }

    private static func isReset(_ error: Error) -> Bool {
        if let io = error as? IOError {
            return io.errnoCode == ECONNRESET || io.errnoCode == EPIPE
        }
        return false
    }
}
