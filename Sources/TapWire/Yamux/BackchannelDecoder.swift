import NIOCore

/// Decodes a `backchannel` connection (after its 11-byte magic): a yamux session whose streams carry HTTP/2 gRPC
/// sessions (client → Gitaly on the client's first stream, Gitaly → client on the one Gitaly opens) and
/// sidechannels (GITALY-WIRE.md §1). Each stream is classified by the first 11 bytes its opener sends.
///
/// Calls that name a `gitaly-sidechannel-id` are held until that sidechannel ends, so their record carries the
/// sidechannel's bytes and duration.
public struct BackchannelDecoder: Sendable {
    static let sidechannelMagic: [UInt8] = Array("sidechannel".utf8)

    private enum Content: Sendable {
        /// The opener's first bytes, and what either side sent meanwhile.
        case sniffing(prefix: [UInt8], held: [HeldPiece])
        case http2(HTTP2SessionDecoder)
        case sidechannelHandshake(prefix: [UInt8], record: SidechannelRecord, ackRemaining: Int)
        case sidechannel(SidechannelState)
        case opaque
    }

    private struct HeldPiece: Sendable {
        var bytes: ByteBuffer
        var direction: Direction
        var time: UInt64
    }

    private struct SidechannelState: Sendable {
        var record: SidechannelRecord
        var ackRemaining: Int
        var client = PktLineCounter(banded: false)
        var server = PktLineCounter(banded: true)
    }

    private struct Stream: Sendable {
        var opener: Direction
        var content: Content
        var finFrom: Set<Direction> = []
    }

    private var toServer = YamuxFrameParser()
    private var toClient = YamuxFrameParser()
    private var streams: [UInt32: Stream] = [:]
    /// Recently ended streams: frames still in flight for them are ignored, not errors.
    private var ended: Set<UInt32> = []
    private var endedOrder: [UInt32] = []
    /// Calls waiting for their sidechannel to end, by sidechannel id.
    private var waitingCalls: [Int64: GRPCCallRecord] = [:]
    /// Sidechannels that ended before their call did, by id.
    private var endedSidechannels: [Int64: SidechannelRecord] = [:]
    /// Ids of sidechannels still open.
    private var openSidechannels: Set<Int64> = []
    private var limits: GRPCCallAssembler.Limits
    /// Events of every stream in the order they happened, when `limits.recordEvents` is on.
    private var events: [WireEvent] = []
    public private(set) var sidechannelCount = 0
    public private(set) var streamCount = 0

    public init(limits: GRPCCallAssembler.Limits = .init()) {
        self.limits = limits
    }

    /// Feeds yamux bytes that travelled in `direction`.
    public mutating func feed(
        _ buffer: ByteBuffer, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) throws {
        var parser = direction == .clientToServer ? toServer : toClient
        defer {
            if direction == .clientToServer { toServer = parser } else { toClient = parser }
        }
        try parser.feed(buffer) { event in
            switch event {
            case .header(let header):
                try handle(header, direction: direction, at: time, emit: emit)
            case .data(let streamID, let piece):
                try deliver(piece, streamID: streamID, direction: direction, at: time, emit: emit)
            }
        }
    }

    /// Hands out the events reported since the last call (none unless recording).
    public mutating func takeEvents() -> [WireEvent] {
        guard !events.isEmpty else { return [] }
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    /// Stops reporting events on every stream, present and future.
    public mutating func stopEvents() {
        limits.recordEvents = false
        events = []
        for id in streams.keys {
            if case .http2(var session) = streams[id]!.content {
                streams[id]!.content = .opaque
                session.stopEvents()
                streams[id]!.content = .http2(session)
            }
        }
    }

    /// Moves a session's events into this decoder's, naming the yamux stream they travelled on.
    private mutating func collect(_ session: inout HTTP2SessionDecoder, streamID: UInt32, opener: Direction) {
        guard limits.recordEvents else { return }
        for var event in session.takeEvents() {
            event.yamuxStreamID = streamID
            event.fromGitaly = opener == .serverToClient
            events.append(event)
        }
    }

    private mutating func reportSidechannel(_ kind: WireEvent.Kind, yamuxStreamID: UInt32, at time: UInt64) {
        guard limits.recordEvents else { return }
        events.append(WireEvent(kind, time: time, streamID: 0, yamuxStreamID: yamuxStreamID, fromGitaly: true))
    }

    /// The connection closed: end every stream and emit every held call.
    public mutating func finish(end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        for id in streams.keys.sorted() {
            endStream(id, reason: .connectionLost, callEnd: end, at: time, emit: emit)
        }
        for id in waitingCalls.keys.sorted() {
            emit(waitingCalls.removeValue(forKey: id)!)
        }
    }

    private mutating func handle(
        _ header: YamuxFrameHeader, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) throws {
        switch header.type {
        case .ping:
            guard header.streamID == 0 else { throw WireDecodingError("yamux ping on stream \(header.streamID)") }
            return
        case .goAway:
            guard header.streamID == 0 else { throw WireDecodingError("yamux go-away on stream \(header.streamID)") }
            return
        case .data, .windowUpdate:
            break
        }
        let id = header.streamID
        if id == 0 {
            guard header.type == .windowUpdate, header.flags == 0 else {
                throw WireDecodingError("yamux \(header.type) with flags \(header.flags) on stream 0")
            }
            return
        }
        if header.has(YamuxFrameHeader.syn) {
            guard streams[id] == nil else { throw WireDecodingError("yamux stream \(id) opened twice") }
            guard streams.count < limits.maxOpenCalls else {
                throw WireDecodingError("more than \(limits.maxOpenCalls) yamux streams open at once")
            }
            streams[id] = Stream(opener: direction, content: .sniffing(prefix: [], held: []))
            streamCount += 1
            ended.remove(id)
        }
        guard streams[id] != nil else {
            if ended.contains(id) { return }
            throw WireDecodingError("yamux \(header.type) frame on unknown stream \(id)")
        }
        if header.has(YamuxFrameHeader.rst) {
            endStream(id, reason: .reset(by: direction), callEnd: .reset(by: direction, code: 0), at: time, emit: emit)
        } else if header.has(YamuxFrameHeader.fin) {
            streams[id]!.finFrom.insert(direction)
            if streams[id]!.finFrom.count == 2 {
                endStream(id, reason: .closed, callEnd: .connectionLost, at: time, emit: emit)
            }
        }
    }

    private mutating func deliver(
        _ piece: ByteBuffer, streamID: UInt32, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) throws {
        guard var stream = streams[streamID] else {
            if ended.contains(streamID) { return }
            throw WireDecodingError("yamux data on unknown stream \(streamID)")
        }
        if stream.finFrom.contains(direction) {
            throw WireDecodingError("yamux data on stream \(streamID) after its sender's FIN")
        }
        // Take the content out so the decoders inside are mutated in place.
        let content = stream.content
        stream.content = .opaque
        streams[streamID] = stream
        stream.content = try advance(
            content, piece, streamID: streamID, opener: stream.opener, direction: direction, at: time, emit: emit)
        if streams[streamID] != nil { streams[streamID]!.content = stream.content }
    }

    private mutating func advance(
        _ content: Content, _ piece: ByteBuffer, streamID: UInt32, opener: Direction, direction: Direction,
        at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) throws -> Content {
        switch content {
        case .opaque:
            return .opaque
        case .sniffing(var prefix, var held):
            held.append(HeldPiece(bytes: piece, direction: direction, time: time))
            if direction == opener {
                let take = min(11 - prefix.count, piece.readableBytes)
                prefix += piece.getBytes(at: piece.readerIndex, length: take)!
            } else if held.reduce(0, { $0 + $1.bytes.readableBytes }) > 1 << 20 {
                return .opaque
            }
            let preface = HTTP2Preface.bytes[0..<11]
            let maybeHTTP2 = prefix[...] == preface.prefix(prefix.count)
            let maybeSidechannel = prefix[...] == Self.sidechannelMagic.prefix(prefix.count)
            if !maybeHTTP2 && !maybeSidechannel { return .opaque }
            guard prefix.count == 11 else { return .sniffing(prefix: prefix, held: held) }
            var next: Content
            if maybeHTTP2 {
                next = .http2(HTTP2SessionDecoder(limits: limits))
            } else {
                var record = SidechannelRecord(id: 0, yamuxStreamID: streamID, openTime: held.first?.time ?? time)
                record.id = 0
                next = .sidechannelHandshake(prefix: [], record: record, ackRemaining: 2)
            }
            for h in held {
                next = try advance(next, h.bytes, streamID: streamID, opener: opener, direction: h.direction, at: h.time, emit: emit)
            }
            return next
        case .http2(var session):
            let sessionDirection: Direction = direction == opener ? .clientToServer : .serverToClient
            do {
                try session.feed(piece, direction: sessionDirection, at: time) { record in
                    var record = record
                    record.yamuxStreamID = streamID
                    record.fromGitaly = opener == .serverToClient
                    route(record, emit: emit)
                }
            } catch {
                collect(&session, streamID: streamID, opener: opener)
                throw error
            }
            collect(&session, streamID: streamID, opener: opener)
            return .http2(session)
        case .sidechannelHandshake(var prefix, let record, let ackRemaining):
            var piece = piece
            guard direction == opener else {
                // The client's `ok` may not arrive before the id; keep it for the sidechannel state.
                var state = SidechannelState(record: record, ackRemaining: ackRemaining)
                consumeSidechannel(&state, &piece, direction: direction, at: time)
                return .sidechannelHandshake(prefix: prefix, record: state.record, ackRemaining: state.ackRemaining)
            }
            // The magic (11 bytes) then the id, 8 bytes big-endian.
            let need = 19 - prefix.count
            let take = min(need, piece.readableBytes)
            prefix += piece.readBytes(length: take)!
            guard prefix.count == 19 else {
                return .sidechannelHandshake(prefix: prefix, record: record, ackRemaining: ackRemaining)
            }
            var record = record
            record.id = prefix[11..<19].reduce(Int64(0)) { $0 << 8 | Int64($1) }
            sidechannelCount += 1
            openSidechannels.insert(record.id)
            reportSidechannel(.sidechannelOpened(id: record.id), yamuxStreamID: streamID, at: time)
            var state = SidechannelState(record: record, ackRemaining: ackRemaining)
            consumeSidechannel(&state, &piece, direction: direction, at: time)
            return .sidechannel(state)
        case .sidechannel(var state):
            var piece = piece
            consumeSidechannel(&state, &piece, direction: direction, at: time)
            return .sidechannel(state)
        }
    }

    private mutating func consumeSidechannel(
        _ state: inout SidechannelState, _ piece: inout ByteBuffer, direction: Direction, at time: UInt64
    ) {
        if direction == .clientToServer {
            if state.ackRemaining > 0 {
                let n = min(state.ackRemaining, piece.readableBytes)
                piece.moveReaderIndex(forwardBy: n)
                state.ackRemaining -= n
            }
            guard piece.readableBytes > 0 else { return }
            reportSidechannel(.sidechannelData(direction, piece), yamuxStreamID: state.record.yamuxStreamID, at: time)
            state.record.bytesToServer += piece.readableBytes
            state.record.lastToServerTime = time
            var done = false
            state.client.feed(piece) { done = true }
            if done, state.record.clientDoneTime == nil { state.record.clientDoneTime = time }
        } else {
            if piece.readableBytes > 0 {
                reportSidechannel(.sidechannelData(direction, piece), yamuxStreamID: state.record.yamuxStreamID, at: time)
                if state.record.firstToClientTime == nil { state.record.firstToClientTime = time }
                state.record.lastToClientTime = time
            }
            state.record.bytesToClient += piece.readableBytes
            state.server.feed(piece) {}
            state.record.serverBands = state.server.valid ? state.server.bands : nil
        }
    }

    private mutating func endStream(
        _ id: UInt32, reason: SidechannelRecord.End, callEnd: GRPCCallRecord.End, at time: UInt64,
        emit: (GRPCCallRecord) -> Void
    ) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        ended.insert(id)
        endedOrder.append(id)
        if endedOrder.count > 4096 { ended.remove(endedOrder.removeFirst()) }
        switch stream.content {
        case .http2(var session):
            session.finish(end: callEnd, at: time) { record in
                var record = record
                record.yamuxStreamID = id
                record.fromGitaly = stream.opener == .serverToClient
                route(record, emit: emit)
            }
            collect(&session, streamID: id, opener: stream.opener)
        case .sidechannel(var state):
            state.record.endTime = time
            state.record.end = reason
            reportSidechannel(.sidechannelEnded(reason), yamuxStreamID: id, at: time)
            sidechannelEnded(state.record, emit: emit)
        default:
            break
        }
    }

    /// A call leaves now, or waits for the sidechannel it names.
    private mutating func route(_ record: GRPCCallRecord, emit: (GRPCCallRecord) -> Void) {
        guard let text = record.requestHeader("gitaly-sidechannel-id"), let id = Int64(text) else {
            emit(record)
            return
        }
        var record = record
        if let sidechannel = endedSidechannels.removeValue(forKey: id) {
            record.sidechannel = sidechannel
            emit(record)
        } else if openSidechannels.contains(id), waitingCalls.count < limits.maxOpenCalls {
            waitingCalls[id] = record
        } else {
            emit(record)
        }
    }

    private mutating func sidechannelEnded(_ sidechannel: SidechannelRecord, emit: (GRPCCallRecord) -> Void) {
        openSidechannels.remove(sidechannel.id)
        if var call = waitingCalls.removeValue(forKey: sidechannel.id) {
            call.sidechannel = sidechannel
            emit(call)
        } else {
            if endedSidechannels.count >= 1024, let any = endedSidechannels.keys.first {
                endedSidechannels[any] = nil
            }
            endedSidechannels[sidechannel.id] = sidechannel
        }
    }
}
