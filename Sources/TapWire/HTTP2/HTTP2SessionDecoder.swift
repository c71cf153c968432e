import NIOCore

/// Decodes both directions of one HTTP/2 session (a plain connection, or one yamux stream of a backchannel)
/// into gRPC calls. Pure: bytes and times in, finished calls out.
///
/// Each direction has its own frame parser and HPACK decoder; SETTINGS_HEADER_TABLE_SIZE sent by one side sizes
/// the decoder of the headers travelling toward it.
public struct HTTP2SessionDecoder: Sendable {
    private struct Side: Sendable {
        var hpack = HPACKByteDecoder()
        /// The last decoded block; its memory is reused for the next.
        var block = HeaderBlock()
        var prefaceRemaining: Int
        /// A header block waiting for CONTINUATION frames.
        var pendingBlock: (streamID: UInt32, fragment: ByteBuffer, endStream: Bool, isPushPromise: Bool)?
        var frames = 0

        init(expectsPreface: Bool) {
            prefaceRemaining = expectsPreface ? HTTP2Preface.bytes.count : 0
        }
    }

    // Optional so `feed` can move a side out and back without a copy-on-write of its HPACK table.
    private var toServer: Side? = Side(expectsPreface: true)
    private var toClient: Side? = Side(expectsPreface: false)
    private var toServerParser: HTTP2FrameParser? = HTTP2FrameParser()
    private var toClientParser: HTTP2FrameParser? = HTTP2FrameParser()
    public var assembler: GRPCCallAssembler
    /// Cap on a header block assembled from HEADERS + CONTINUATION frames.
    public var maxHeaderBlock = 1 << 20

    /// Creates a decoder; set `clientPrefaceSeen` when the caller already consumed the client preface.
    public init(limits: GRPCCallAssembler.Limits = .init(), clientPrefaceSeen: Bool = false) {
        assembler = GRPCCallAssembler(limits: limits)
        if clientPrefaceSeen { toServer!.prefaceRemaining = 0 }
    }

    /// Hands out the events reported since the last call (none unless recording).
    public mutating func takeEvents() -> [WireEvent] {
        assembler.takeEvents()
    }

    /// Stops reporting events.
    public mutating func stopEvents() {
        assembler.stopEvents()
    }

    /// Frames decoded so far, per direction.
    public var frameCounts: (toServer: Int, toClient: Int) { (toServer?.frames ?? 0, toClient?.frames ?? 0) }

    /// Feeds bytes that travelled in `direction`.
    ///
    /// - Throws: `WireDecodingError` when the bytes are not a valid HTTP/2 session; stop feeding this decoder then.
    public mutating func feed(
        _ buffer: ByteBuffer, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) throws {
        var buffer = buffer
        guard var side = direction == .clientToServer ? toServer.take() : toClient.take(),
            var parser = direction == .clientToServer ? toServerParser.take() : toClientParser.take()
        else {
            throw WireDecodingError("HTTP/2 session decoder re-entered")
        }
        defer {
            if direction == .clientToServer {
                toServer = side
                toServerParser = parser
            } else {
                toClient = side
                toClientParser = parser
            }
        }
        if side.prefaceRemaining > 0 {
            let offset = HTTP2Preface.bytes.count - side.prefaceRemaining
            let n = min(side.prefaceRemaining, buffer.readableBytes)
            let got = buffer.readBytes(length: n)!
            guard got[...] == HTTP2Preface.bytes[offset..<offset + n] else {
                throw WireDecodingError("client did not send the HTTP/2 connection preface")
            }
            side.prefaceRemaining -= n
            if buffer.readableBytes == 0 { return }
        }
        try parser.feed(buffer) { event in
            switch event {
            case .data(let streamID, let piece):
                try Self.checkNoPendingBlock(side, before: "DATA")
                assembler.data(piece, streamID: streamID, direction: direction, at: time)
            case .dataEnd(let header):
                try Self.checkNoPendingBlock(side, before: "DATA")
                side.frames += 1
                if header.has(.endStream) {
                    assembler.endStream(streamID: header.streamID, direction: direction, at: time, emit: emit)
                }
            case .frame(let header, let payload):
                side.frames += 1
                try handle(header, payload, side: &side, direction: direction, at: time, emit: emit)
            }
        }
    }

    /// Ends every open call (connection closed or decoding stopped).
    public mutating func finish(end: GRPCCallRecord.End, at time: UInt64, emit: (GRPCCallRecord) -> Void) {
        assembler.finishAll(end: end, at: time, emit: emit)
    }

    private static func checkNoPendingBlock(_ side: Side, before frame: String) throws {
        if let pending = side.pendingBlock {
            throw WireDecodingError("\(frame) frame arrived while stream \(pending.streamID) expected CONTINUATION")
        }
    }

    private mutating func handle(
        _ header: HTTP2FrameHeader, _ payload: ByteBuffer, side: inout Side, direction: Direction, at time: UInt64,
        emit: (GRPCCallRecord) -> Void
    ) throws {
        var payload = payload
        if header.type != .continuation {
            try Self.checkNoPendingBlock(side, before: header.type.description)
        }
        switch header.type {
        case .headers, .pushPromise:
            guard header.streamID != 0 else { throw WireDecodingError("\(header.type) frame on stream 0") }
            var padding = 0
            if header.has(.padded) {
                guard let pad = payload.readInteger(as: UInt8.self) else {
                    throw WireDecodingError("\(header.type) frame too short for its pad length")
                }
                padding = Int(pad)
            }
            if header.type == .headers, header.has(.priority) {
                guard payload.readableBytes >= 5 else { throw WireDecodingError("HEADERS frame too short for its priority") }
                payload.moveReaderIndex(forwardBy: 5)
            }
            if header.type == .pushPromise {
                guard payload.readableBytes >= 4 else { throw WireDecodingError("PUSH_PROMISE frame too short") }
                payload.moveReaderIndex(forwardBy: 4)
            }
            guard padding <= payload.readableBytes else {
                throw WireDecodingError("\(header.type) frame on stream \(header.streamID) has padding longer than its payload")
            }
            let fragment = payload.readSlice(length: payload.readableBytes - padding)!
            let block = (header.streamID, fragment, header.has(.endStream), header.type == .pushPromise)
            if header.has(.endHeaders) {
                try decodeBlock(block, side: &side, direction: direction, at: time, emit: emit)
            } else {
                side.pendingBlock = block
            }
        case .continuation:
            guard var pending = side.pendingBlock, pending.streamID == header.streamID else {
                throw WireDecodingError("CONTINUATION frame on stream \(header.streamID) without a preceding HEADERS")
            }
            guard pending.fragment.readableBytes + payload.readableBytes <= maxHeaderBlock else {
                throw WireDecodingError("header block on stream \(header.streamID) exceeds \(maxHeaderBlock) bytes")
            }
            if pending.fragment.readableBytes == pending.fragment.capacity {
                // The fragment may be a slice of shared storage; give it its own before appending.
                var own = ByteBuffer()
                own.writeImmutableBuffer(pending.fragment)
                pending.fragment = own
            }
            pending.fragment.writeBuffer(&payload)
            if header.has(.endHeaders) {
                side.pendingBlock = nil
                try decodeBlock(pending, side: &side, direction: direction, at: time, emit: emit)
            } else {
                side.pendingBlock = pending
            }
        case .rstStream:
            guard header.length == 4, header.streamID != 0 else {
                throw WireDecodingError("malformed RST_STREAM frame (length \(header.length), stream \(header.streamID))")
            }
            let code = payload.readInteger(as: UInt32.self)!
            assembler.reset(streamID: header.streamID, direction: direction, code: code, at: time, emit: emit)
        case .settings:
            guard header.streamID == 0, header.length % 6 == 0 else {
                throw WireDecodingError("malformed SETTINGS frame (length \(header.length), stream \(header.streamID))")
            }
            if header.has(.ack) {
                guard header.length == 0 else { throw WireDecodingError("SETTINGS ACK with a payload") }
                return
            }
            while let id = payload.readInteger(as: UInt16.self), let value = payload.readInteger(as: UInt32.self) {
                if id == 0x1 {
                    // The sender's decoder limit bounds the encoder of the headers travelling toward the sender.
                    // A passive observer only needs a ceiling at least as high as what the encoder may use.
                    let limit = Int(min(value, 1 << 24))
                    if direction == .serverToClient, var other = toServer.take() {
                        if limit > other.hpack.maxDynamicTableLength { other.hpack.maxDynamicTableLength = limit }
                        toServer = other
                    } else if direction == .clientToServer, var other = toClient.take() {
                        if limit > other.hpack.maxDynamicTableLength { other.hpack.maxDynamicTableLength = limit }
                        toClient = other
                    }
                }
            }
        case .ping:
            guard header.length == 8, header.streamID == 0 else { throw WireDecodingError("malformed PING frame") }
        case .goAway:
            guard header.length >= 8, header.streamID == 0 else { throw WireDecodingError("malformed GOAWAY frame") }
            let last = payload.readInteger(as: UInt32.self)! & 0x7FFF_FFFF
            let code = payload.readInteger(as: UInt32.self)!
            assembler.goAway(lastStreamID: last, direction: direction, code: code, at: time, emit: emit)
        case .windowUpdate:
            guard header.length == 4 else { throw WireDecodingError("malformed WINDOW_UPDATE frame") }
        case .priority:
            guard header.length == 5, header.streamID != 0 else { throw WireDecodingError("malformed PRIORITY frame") }
        default:
            break  // Unknown frame types are ignored (RFC 9113 §4.1).
        }
    }

    private mutating func decodeBlock(
        _ block: (streamID: UInt32, fragment: ByteBuffer, endStream: Bool, isPushPromise: Bool),
        side: inout Side, direction: Direction, at time: UInt64, emit: (GRPCCallRecord) -> Void
    ) throws {
        do {
            try side.hpack.decode(block.fragment, into: &side.block)
        } catch {
            throw WireDecodingError("HPACK decoding failed on stream \(block.streamID): \(error)")
        }
        if block.isPushPromise { return }
        try assembler.headers(
            side.block, streamID: block.streamID, direction: direction, endStream: block.endStream, at: time,
            emit: emit)
    }
}
