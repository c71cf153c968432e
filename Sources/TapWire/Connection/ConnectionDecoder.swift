import NIOCore

/// What kind of connection the first bytes from the client announced (GITALY-WIRE.md §1).
public enum ConnectionKind: String, Sendable {
    /// Fewer than 11 bytes seen so far.
    case undetermined
    /// Plain HTTP/2 (gRPC), starting with the connection preface.
    case http2
    /// The `backchannel` handshake: a yamux session follows.
    case backchannel
    /// Anything else; still forwarded and measured.
    case opaque
}

/// The passive decoder of one proxied connection: sniffs its kind, then decodes a copy of its bytes.
///
/// It never sees the forwarding path: it gets the same buffers, reads slices of them and reports finished calls.
/// After the first decoding error it stops for good (`stoppedReason`) and ends its open calls; it never throws.
public struct ConnectionDecoder: Sendable {
    /// Bytes that decide the connection kind.
    public static let sniffLength = 11
    static let backchannelMagic: [UInt8] = Array("backchannel".utf8)

    public private(set) var kind: ConnectionKind = .undetermined
    /// Why decoding stopped, when it did.
    public private(set) var stoppedReason: String?
    /// Bytes seen per direction (also counted after decoding stopped).
    public private(set) var bytesToServer = 0
    public private(set) var bytesToClient = 0

    private var sniffed: [UInt8] = []
    private var heldBack: [(ByteBuffer, Direction, UInt64)] = []
    private var heldBackBytes = 0
    private var session: HTTP2SessionDecoder?
    private var backchannel: BackchannelDecoder?
    /// Bytes of the `backchannel` magic still to skip before the yamux session starts.
    private var magicRemaining = 0
    private var limits: GRPCCallAssembler.Limits
    /// Events of decoders already finished, waiting for `takeEvents()`.
    private var finishedEvents: [WireEvent] = []

    public init(limits: GRPCCallAssembler.Limits = .init()) {
        self.limits = limits
    }

    /// True while the decoder still decodes (not stopped, kind not opaque). Inlinable so that a class holding the
    /// decoder reads the two fields instead of copying the whole decoder to call a getter (once per read event).
    @inlinable public var isDecoding: Bool { stoppedReason == nil && kind != .opaque }

    /// True while calls are reported as `WireEvent`s (`Limits.recordEvents`, until `stopEvents()`).
    public var recordsEvents: Bool { limits.recordEvents }

    /// Hands out the events reported since the last call, in the order they happened (none unless recording).
    public mutating func takeEvents() -> [WireEvent] {
        guard limits.recordEvents else { return [] }
        var events = finishedEvents
        finishedEvents = []
        if session != nil {
            let more = session!.takeEvents()
            if events.isEmpty { return more }
            events += more
        } else if backchannel != nil {
            let more = backchannel!.takeEvents()
            if events.isEmpty { return more }
            events += more
        }
        return events
    }

    /// Stops reporting events for the rest of the connection (recording stopped); pending ones are dropped.
    public mutating func stopEvents() {
        limits.recordEvents = false
        finishedEvents = []
        session?.stopEvents()
        backchannel?.stopEvents()
    }

    /// Keeps the events of a decoder about to be dropped.
    private mutating func keepEvents(of session: inout HTTP2SessionDecoder) {
        if limits.recordEvents { finishedEvents += session.takeEvents() }
    }

    /// Feeds a copy of bytes that were forwarded in `direction` at `time` (ns since the epoch).
    public mutating func feed(_ buffer: ByteBuffer, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        if direction == .clientToServer { bytesToServer += buffer.readableBytes } else { bytesToClient += buffer.readableBytes }
        guard isDecoding else { return }
        if kind == .undetermined {
            sniff(buffer, direction: direction, at: time, emit: emit)
            return
        }
        decode(buffer, direction: direction, at: time, emit: emit)
    }

    /// The connection closed: ends open calls as lost.
    public mutating func close(at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        if var finishing = session.take() {
            finishing.finish(end: .connectionLost, at: time, emit: emit)
            keepEvents(of: &finishing)
        }
        finishBackchannel(end: .connectionLost, at: time, emit: emit)
    }

    /// Sidechannels seen on a backchannel connection.
    public var sidechannels: Int { backchannel?.sidechannelCount ?? finishedSidechannels }
    private var finishedSidechannels = 0

    private mutating func finishBackchannel(end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        guard var decoder = backchannel.take() else { return }
        finishedSidechannels = decoder.sidechannelCount
        decoder.finish(end: end, at: time, emit: emit)
        if limits.recordEvents { finishedEvents += decoder.takeEvents() }
    }

    /// Stops decoding with `reason`, ending open calls; forwarding is unaffected.
    public mutating func stop(_ reason: String, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        guard stoppedReason == nil else { return }
        stoppedReason = reason
        if var finishing = session.take() {
            finishing.finish(end: .decodingStopped(reason), at: time, emit: emit)
            keepEvents(of: &finishing)
        }
        finishBackchannel(end: .decodingStopped(reason), at: time, emit: emit)
        heldBack = []
    }

    private mutating func sniff(_ buffer: ByteBuffer, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        if direction == .serverToClient {
            // Servers speak second on every kind we know; keep their bytes until the kind is known.
            heldBackBytes += buffer.readableBytes
            guard heldBackBytes <= 1 << 20 else {
                stop("server sent over 1 MiB before the client's first 11 bytes", at: time, emit: emit)
                return
            }
            heldBack.append((buffer, direction, time))
            return
        }
        let take = min(Self.sniffLength - sniffed.count, buffer.readableBytes)
        sniffed += buffer.getBytes(at: buffer.readerIndex, length: take)!
        heldBack.append((buffer, direction, time))
        // Decide as soon as the prefix can no longer match a known magic.
        let preface = HTTP2Preface.bytes[0..<Self.sniffLength]
        let matchesHTTP2 = sniffed[...] == preface.prefix(sniffed.count)
        let matchesBackchannel = sniffed[...] == Self.backchannelMagic.prefix(sniffed.count)
        if !matchesHTTP2, !matchesBackchannel {
            kind = .opaque
            heldBack = []
            return
        }
        guard sniffed.count == Self.sniffLength else { return }
        if matchesHTTP2 {
            kind = .http2
            session = HTTP2SessionDecoder(limits: limits)
        } else {
            kind = .backchannel
            backchannel = BackchannelDecoder(limits: limits)
            magicRemaining = Self.sniffLength
        }
        let pending = heldBack
        heldBack = []
        for (bytes, dir, t) in pending {
            decode(bytes, direction: dir, at: t, emit: emit)
        }
    }

    private mutating func decode(_ buffer: ByteBuffer, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        do {
            if session != nil {
                try session!.feed(buffer, direction: direction, at: time, emit: emit)
            } else if backchannel != nil {
                var buffer = buffer
                if direction == .clientToServer, magicRemaining > 0 {
                    let n = min(magicRemaining, buffer.readableBytes)
                    buffer.moveReaderIndex(forwardBy: n)
                    magicRemaining -= n
                    if buffer.readableBytes == 0 { return }
                }
                try backchannel!.feed(buffer, direction: direction, at: time, emit: emit)
            }
        } catch {
            stop((error as? WireDecodingError)?.reason ?? "\(error)", at: time, emit: emit)
        }
    }
}
