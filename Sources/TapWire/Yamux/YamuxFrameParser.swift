import NIOCore

/// The 12-byte yamux frame header (hashicorp/yamux `spec.md`), all fields big-endian.
public struct YamuxFrameHeader: Sendable, Hashable {
    public enum FrameType: UInt8, Sendable {
        case data = 0
        case windowUpdate = 1
        case ping = 2
        case goAway = 3
    }

    public static let size = 12
    public static let syn: UInt16 = 0x1
    public static let ack: UInt16 = 0x2
    public static let fin: UInt16 = 0x4
    public static let rst: UInt16 = 0x8

    public var type: FrameType
    public var flags: UInt16
    public var streamID: UInt32
    /// Payload length for data frames; window delta, ping value or go-away code otherwise.
    public var length: UInt32

    public init(type: FrameType, flags: UInt16, streamID: UInt32, length: UInt32) {
        self.type = type
        self.flags = flags
        self.streamID = streamID
        self.length = length
    }

    public func has(_ flag: UInt16) -> Bool { flags & flag != 0 }
}

/// Splits one direction of a yamux session into frames; data payloads are handed out as slices as they arrive.
public struct YamuxFrameParser: Sendable {
    public enum Event: Sendable {
        /// A frame header; for data frames the payload follows as `.data` pieces.
        case header(YamuxFrameHeader)
        /// A piece of a data frame's payload.
        case data(streamID: UInt32, ByteBuffer)
    }

    /// Largest data frame accepted. Gitaly raises the stream window to 16 MiB; no valid frame exceeds its window.
    public var maxDataLength: UInt32 = 16 * 1024 * 1024

    private var headerBytes: [UInt8] = []
    private var dataRemaining = 0
    private var dataStream: UInt32 = 0

    public init() {}

    /// Consumes `input`, reporting frame headers and payload pieces in order.
    public mutating func feed(_ input: ByteBuffer, _ emit: (Event) throws -> Void) throws {
        var input = input
        while input.readableBytes > 0 {
            if dataRemaining > 0 {
                let n = min(dataRemaining, input.readableBytes)
                dataRemaining -= n
                try emit(.data(streamID: dataStream, input.readSlice(length: n)!))
                continue
            }
            let header: YamuxFrameHeader
            if headerBytes.isEmpty, input.readableBytes >= YamuxFrameHeader.size {
                header = try Self.parse(
                    version: input.readInteger()!, type: input.readInteger()!, flags: input.readInteger()!,
                    stream: input.readInteger()!, length: input.readInteger()!)
            } else {
                while headerBytes.count < YamuxFrameHeader.size, let b = input.readInteger(as: UInt8.self) {
                    headerBytes.append(b)
                }
                guard headerBytes.count == YamuxFrameHeader.size else { return }
                var raw = ByteBuffer(bytes: headerBytes)
                headerBytes.removeAll(keepingCapacity: true)
                header = try Self.parse(
                    version: raw.readInteger()!, type: raw.readInteger()!, flags: raw.readInteger()!,
                    stream: raw.readInteger()!, length: raw.readInteger()!)
            }
            if header.type == .data {
                guard header.length <= maxDataLength else {
                    throw WireDecodingError("yamux data frame of \(header.length) bytes exceeds \(maxDataLength)")
                }
                guard header.streamID != 0 else { throw WireDecodingError("yamux data frame on stream 0") }
                dataRemaining = Int(header.length)
                dataStream = header.streamID
            }
            try emit(.header(header))
        }
    }

    private static func parse(version: UInt8, type: UInt8, flags: UInt16, stream: UInt32, length: UInt32) throws
        -> YamuxFrameHeader
    {
        guard version == 0 else { throw WireDecodingError("yamux frame with version \(version) (expected 0)") }
        guard let frameType = YamuxFrameHeader.FrameType(rawValue: type) else {
            throw WireDecodingError("yamux frame of unknown type \(type)")
        }
        return YamuxFrameHeader(type: frameType, flags: flags, streamID: stream, length: length)
    }
}
