/// Appends protobuf wire-format fields (protobuf.dev/programming-guides/encoding) to a byte array, without a schema
/// compiler: the OTLP encoder names its field numbers itself.
///
/// A nested message is written in place and its length prefix inserted in front afterwards, so no intermediate
/// buffers are built; lengths are minimal varints as every protobuf parser expects.
struct ProtobufWriter {
    /// The bytes written so far.
    private(set) var bytes: [UInt8] = []

    init(reservingCapacity capacity: Int = 0) {
        bytes.reserveCapacity(capacity)
    }

    /// Wire types used here (VARINT 0, I64 1, LEN 2, I32 5).
    private enum WireType: UInt64 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    private mutating func tag(_ field: UInt32, _ type: WireType) {
        varint(UInt64(field) << 3 | type.rawValue)
    }

    /// A base-128 varint, low group first.
    mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    /// An unsigned varint field (`uint32`, `uint64`, enums).
    mutating func uint64(_ field: UInt32, _ value: UInt64) {
        tag(field, .varint)
        varint(value)
    }

    /// An `int64` field: negative values are their two's-complement bits as a 10-byte varint.
    mutating func int64(_ field: UInt32, _ value: Int64) {
        uint64(field, UInt64(bitPattern: value))
    }

    /// A `bool` field.
    mutating func bool(_ field: UInt32, _ value: Bool) {
        uint64(field, value ? 1 : 0)
    }

    /// A `fixed64` field, little-endian.
    mutating func fixed64(_ field: UInt32, _ value: UInt64) {
        tag(field, .fixed64)
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    /// A `fixed32` field, little-endian.
    mutating func fixed32(_ field: UInt32, _ value: UInt32) {
        tag(field, .fixed32)
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    /// A `double` field: the IEEE 754 bits as fixed64.
    mutating func double(_ field: UInt32, _ value: Double) {
        fixed64(field, value.bitPattern)
    }

    /// A `string` field, UTF-8.
    mutating func string(_ field: UInt32, _ value: String) {
        tag(field, .lengthDelimited)
        var text = value
        text.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    /// A `bytes` field holding `value` as big-endian bytes, high half first (trace and span ids).
    mutating func bigEndianID(_ field: UInt32, _ halves: UInt64...) {
        tag(field, .lengthDelimited)
        varint(UInt64(halves.count * 8))
        for half in halves {
            for shift in stride(from: 56, through: 0, by: -8) {
                bytes.append(UInt8(truncatingIfNeeded: half >> UInt64(shift)))
            }
        }
    }

    /// A nested message field: `body` writes the message's fields, then the length prefix is put in front of them.
    mutating func message(_ field: UInt32, _ body: (inout ProtobufWriter) -> Void) {
        tag(field, .lengthDelimited)
        let start = bytes.count
        body(&self)
        let length = bytes.count - start
        var prefix = ProtobufWriter()
        prefix.varint(UInt64(length))
        bytes.insert(contentsOf: prefix.bytes, at: start)
    }
}
