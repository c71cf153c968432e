/// Why a protobuf byte string could not be walked.
enum ProtobufWireError: Error, Equatable {
    /// The bytes end inside a tag, varint, fixed-width value or length-delimited payload.
    case truncated
    /// A varint runs past 10 bytes or past 64 bits.
    case varintOverflow
    /// Field number 0, or a tag beyond 32 bits.
    case invalidTag
    /// Wire type 3/4 (groups, deprecated and never used by Gitaly) or the undefined 6/7.
    case unsupportedWireType(UInt8)
}

/// One field as it appears on the wire, without a schema.
struct ProtobufField {
    /// The payload, by wire type.
    enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        /// The payload's byte range within the reader's buffer.
        case lengthDelimited(Range<Int>)
        case fixed32(UInt32)
    }

    var number: UInt32
    var value: Value
}

/// Walks the fields of one protobuf message (encoding spec: protobuf.dev/programming-guides/encoding) without
/// generated code, checking every length against the end so hostile bytes end the walk with an error, never a trap.
///
/// The buffer must outlive the reader; the reader is meant to live inside a `withUnsafeBufferPointer` closure.
struct ProtobufWireReader {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var position: Int
    private let end: Int

    /// A reader over `range` of `bytes`; `range` must lie within `bytes`.
    init(_ bytes: UnsafeBufferPointer<UInt8>, range: Range<Int>) {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count)
        self.bytes = bytes
        self.position = range.lowerBound
        self.end = range.upperBound
    }

    /// The next field, or nil at the end of the message.
    mutating func nextField() throws(ProtobufWireError) -> ProtobufField? {
        guard position < end else { return nil }
        let tag = try readVarint()
        guard tag <= UInt64(UInt32.max), tag >> 3 != 0 else { throw .invalidTag }
        let number = UInt32(truncatingIfNeeded: tag >> 3)
        let wireType = UInt8(truncatingIfNeeded: tag & 0x7)
        switch wireType {
        case 0:
            return ProtobufField(number: number, value: .varint(try readVarint()))
        case 1:
            return ProtobufField(number: number, value: .fixed64(try readLittleEndian(width: 8)))
        case 2:
            let length = try readVarint()
            guard length <= UInt64(end - position) else { throw .truncated }
            let start = position
            position += Int(length)
            return ProtobufField(number: number, value: .lengthDelimited(start..<position))
        case 5:
            let value = try readLittleEndian(width: 4)
            return ProtobufField(number: number, value: .fixed32(UInt32(truncatingIfNeeded: value)))
        default:
            throw .unsupportedWireType(wireType)
        }
    }

    private mutating func readVarint() throws(ProtobufWireError) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<10 {
            guard position < end else { throw .truncated }
            let byte = bytes[position]
            position += 1
            // The 10th byte holds bit 63 only; anything more would be lost, so it is an error (as in protobuf-go).
            if index == 9 && byte > 1 { throw .varintOverflow }
            value |= UInt64(byte & 0x7F) << (7 * UInt64(index))
            if byte & 0x80 == 0 { return value }
        }
        throw .varintOverflow
    }

    private mutating func readLittleEndian(width: Int) throws(ProtobufWireError) -> UInt64 {
        guard end - position >= width else { throw .truncated }
        var value: UInt64 = 0
        for index in 0..<width {
            value |= UInt64(bytes[position + index]) << (8 * UInt64(index))
        }
        position += width
        return value
    }
}
