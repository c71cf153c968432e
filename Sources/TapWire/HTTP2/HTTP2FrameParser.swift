import NIOCore

/// Splits one direction of an HTTP/2 connection into frames, incrementally, without copying DATA payloads.
///
/// DATA payloads are handed out as slices of the input as they arrive (padding removed), so a 16 MiB frame never
/// has to be buffered. Other frames are delivered whole; their payloads are small and needed in one piece.
/// The parser never touches the bytes it is given: it reads slices that share the caller's storage.
public struct HTTP2FrameParser: Sendable {
    /// What the parser found.
    public enum Event: Sendable {
        /// A complete frame other than DATA, with its raw payload (padding and priority fields still in it).
        case frame(HTTP2FrameHeader, payload: ByteBuffer)
        /// A piece of a DATA frame's content, padding removed. One DATA frame may yield several pieces.
        case data(streamID: UInt32, ByteBuffer)
        /// The end of a DATA frame; the header's flags tell whether it ended the stream.
        case dataEnd(HTTP2FrameHeader)
    }

    private enum State: Sendable {
        case header
        case dataPadLength(HTTP2FrameHeader)
        case dataPayload(HTTP2FrameHeader, dataRemaining: Int, paddingRemaining: Int)
        case controlPayload(HTTP2FrameHeader)
    }

    private var state: State = .header
    /// Bytes of an incomplete frame header or non-DATA payload carried over between calls.
    private var carry = ByteBuffer()
    /// Upper bound on a non-DATA frame payload this parser will buffer.
    public let maxControlPayload: Int

    /// Creates a parser that refuses non-DATA frames larger than `maxControlPayload` bytes.
    public init(maxControlPayload: Int = 1 << 20) {
        self.maxControlPayload = maxControlPayload
    }

    /// True when the parser sits exactly between two frames.
    public var isAtFrameBoundary: Bool {
        if case .header = state, carry.readableBytes == 0 { return true }
        return false
    }

    /// Consumes `input` and reports every frame event found in it, in order.
    ///
    /// - Throws: `WireDecodingError` when the bytes cannot be HTTP/2 frames; the parser is then unusable.
    public mutating func feed(_ input: ByteBuffer, _ emit: (Event) throws -> Void) throws {
        var input = input
        while input.readableBytes > 0 {
            switch state {
            case .header:
                let header: HTTP2FrameHeader
                if carry.readableBytes == 0, input.readableBytes >= HTTP2FrameHeader.size {
                    header = Self.readHeader(from: &input)
                } else {
                    let needed = HTTP2FrameHeader.size - carry.readableBytes
                    var part = input.readSlice(length: min(needed, input.readableBytes))!
                    carry.writeBuffer(&part)
                    guard carry.readableBytes == HTTP2FrameHeader.size else { return }
                    header = Self.readHeader(from: &carry)
                    carry.clear()
                }
                try begin(header, emit)
            case .dataPadLength(let header):
                let padLength = Int(input.readInteger(as: UInt8.self)!)
                guard padLength <= header.length - 1 else {
                    throw WireDecodingError("DATA frame on stream \(header.streamID) has padding longer than its payload")
                }
                state = .dataPayload(header, dataRemaining: header.length - 1 - padLength, paddingRemaining: padLength)
                try finishDataIfDone(emit)
            case .dataPayload(let header, var dataRemaining, var paddingRemaining):
                if dataRemaining > 0 {
                    let n = min(dataRemaining, input.readableBytes)
                    let piece = input.readSlice(length: n)!
                    dataRemaining -= n
                    state = .dataPayload(header, dataRemaining: dataRemaining, paddingRemaining: paddingRemaining)
                    try emit(.data(streamID: header.streamID, piece))
                }
                if dataRemaining == 0, paddingRemaining > 0, input.readableBytes > 0 {
                    let n = min(paddingRemaining, input.readableBytes)
                    input.moveReaderIndex(forwardBy: n)
                    paddingRemaining -= n
                    state = .dataPayload(header, dataRemaining: 0, paddingRemaining: paddingRemaining)
                }
                try finishDataIfDone(emit)
            case .controlPayload(let header):
                if carry.readableBytes == 0, input.readableBytes >= header.length {
                    let payload = input.readSlice(length: header.length)!
                    state = .header
                    try emit(.frame(header, payload: payload))
                } else {
                    let needed = header.length - carry.readableBytes
                    var part = input.readSlice(length: min(needed, input.readableBytes))!
                    carry.writeBuffer(&part)
                    if carry.readableBytes == header.length {
                        let payload = carry
                        carry = ByteBuffer()
                        state = .header
                        try emit(.frame(header, payload: payload))
                    }
                }
            }
        }
    }

    private mutating func begin(_ header: HTTP2FrameHeader, _ emit: (Event) throws -> Void) throws {
        if header.type == .data {
            guard header.streamID != 0 else { throw WireDecodingError("DATA frame on stream 0") }
            if header.has(.padded) {
                guard header.length >= 1 else {
                    throw WireDecodingError("padded DATA frame on stream \(header.streamID) has no pad length")
                }
                state = .dataPadLength(header)
            } else {
                state = .dataPayload(header, dataRemaining: header.length, paddingRemaining: 0)
                try finishDataIfDone(emit)
            }
            return
        }
        guard header.length <= maxControlPayload else {
            throw WireDecodingError(
                "\(header.type) frame of \(header.length) bytes exceeds the \(maxControlPayload)-byte limit"
            )
        }
        if header.length == 0 {
            state = .header
            try emit(.frame(header, payload: ByteBuffer()))
        } else {
            state = .controlPayload(header)
        }
    }

    private mutating func finishDataIfDone(_ emit: (Event) throws -> Void) throws {
        if case .dataPayload(let header, 0, 0) = state {
            state = .header
            try emit(.dataEnd(header))
        }
    }

    private static func readHeader(from buffer: inout ByteBuffer) -> HTTP2FrameHeader {
        let high = Int(buffer.readInteger(as: UInt8.self)!)
        let low = Int(buffer.readInteger(as: UInt16.self)!)
        let type = buffer.readInteger(as: UInt8.self)!
        let flags = buffer.readInteger(as: UInt8.self)!
        let stream = buffer.readInteger(as: UInt32.self)! & 0x7FFF_FFFF
        return HTTP2FrameHeader(length: high << 16 | low, type: HTTP2FrameType(rawValue: type), flags: flags, streamID: stream)
    }
}

/// Why a passive decoder gave up on a byte stream. The message names what was wrong, for logs and spans.
public struct WireDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String

    public init(_ reason: String) { self.reason = reason }

    public var description: String { reason }
}
