import NIOCore

/// An HPACK (RFC 7541) decoder that keeps header values as octets.
///
/// `NIOHPACK` hands out `String`s, which repairs bytes that are not UTF-8; gRPC C-core peers send `-bin` metadata as
/// "true binary" (0x00 then raw bytes) when both advertise SETTINGS 0xFE03, so those values would be damaged. A
/// recording must replay exactly what was sent, so while recording each direction also runs this decoder over the
/// same header blocks. Its dynamic table counts real octets, as the encoder's does.
public struct HPACKByteDecoder: Sendable {
    private struct Entry: Sendable {
        var name: [UInt8]
        var value: [UInt8]
        var size: Int { name.count + value.count + 32 }
    }

    /// Ceiling set by the protocol (SETTINGS_HEADER_TABLE_SIZE of the receiving side).
    public var maxDynamicTableLength: Int {
        didSet {
            if allowedLength > maxDynamicTableLength {
                allowedLength = maxDynamicTableLength
                evict(toFit: 0)
            }
        }
    }
    /// Size the encoder currently uses, changed by dynamic table size updates.
    private var allowedLength: Int
    /// Newest entry last.
    private var entries: [Entry] = []
    private var length = 0

    /// Creates a decoder with the default 4096-octet table.
    public init(maxDynamicTableLength: Int = 4096) {
        self.maxDynamicTableLength = maxDynamicTableLength
        self.allowedLength = maxDynamicTableLength
    }

    /// Decodes one complete header block.
    ///
    /// - Throws: `WireDecodingError` on malformed input; the table state is undefined afterwards.
    public mutating func decode(_ block: ByteBuffer) throws -> [RawHeaderField] {
        var block = block
        var fields: [RawHeaderField] = []
        while let first = block.getInteger(at: block.readerIndex, as: UInt8.self) {
            if first & 0x80 != 0 {
                let index = try Self.readInteger(&block, prefix: 7)
                guard index != 0 else { throw WireDecodingError("HPACK index 0") }
                let entry = try lookup(index)
                fields.append(Self.field(entry.name, entry.value))
            } else if first & 0xC0 == 0x40 {
                let entry = try literal(&block, prefix: 6)
                insert(entry)
                fields.append(Self.field(entry.name, entry.value))
            } else if first & 0xE0 == 0x20 {
                let size = try Self.readInteger(&block, prefix: 5)
                guard size <= maxDynamicTableLength else {
                    throw WireDecodingError("HPACK table size update to \(size) above the limit \(maxDynamicTableLength)")
                }
                allowedLength = size
                evict(toFit: 0)
            } else {
                // 0000xxxx (without indexing) or 0001xxxx (never indexed).
                let entry = try literal(&block, prefix: 4)
                fields.append(Self.field(entry.name, entry.value))
            }
        }
        return fields
    }

    private static func field(_ name: [UInt8], _ value: [UInt8]) -> RawHeaderField {
        RawHeaderField(name: String(decoding: name, as: UTF8.self), value: value)
    }

    private func lookup(_ index: Int) throws -> Entry {
        let statics = HPACKTables.staticEntries
        if index < statics.count {
            return Entry(name: Array(statics[index].name.utf8), value: Array(statics[index].value.utf8))
        }
        let dynamic = index - statics.count
        guard dynamic < entries.count else { throw WireDecodingError("HPACK index \(index) beyond the table") }
        return entries[entries.count - 1 - dynamic]
    }

    private func literal(_ block: inout ByteBuffer, prefix: Int) throws -> Entry {
        let nameIndex = try Self.readInteger(&block, prefix: prefix)
        let name = try nameIndex == 0 ? Self.readString(&block) : lookup(nameIndex).name
        let value = try Self.readString(&block)
        return Entry(name: name, value: value)
    }

    private mutating func insert(_ entry: Entry) {
        if entry.size > allowedLength {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            entries.removeAll()
            length = 0
            return
        }
        evict(toFit: entry.size)
        entries.append(entry)
        length += entry.size
    }

    private mutating func evict(toFit extra: Int) {
        var drop = 0
        var remaining = length
        while remaining + extra > allowedLength, drop < entries.count {
            remaining -= entries[drop].size
            drop += 1
        }
        if drop > 0 {
            entries.removeFirst(drop)
            length = remaining
        }
    }

    /// RFC 7541 §5.1, bounded so a hostile encoding cannot overflow.
    private static func readInteger(_ buffer: inout ByteBuffer, prefix: Int) throws -> Int {
        guard let first = buffer.readInteger(as: UInt8.self) else { throw WireDecodingError("HPACK block ends in an integer") }
        let mask = UInt8((1 << prefix) - 1)
        var value = Int(first & mask)
        guard value == Int(mask) else { return value }
        var shift = 0
        while true {
            guard let byte = buffer.readInteger(as: UInt8.self) else { throw WireDecodingError("HPACK block ends in an integer") }
            value += Int(byte & 0x7F) << shift
            shift += 7
            guard shift <= 28 else { throw WireDecodingError("HPACK integer too large") }
            if byte & 0x80 == 0 { return value }
        }
    }

    private static func readString(_ buffer: inout ByteBuffer) throws -> [UInt8] {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else {
            throw WireDecodingError("HPACK block ends before a string")
        }
        let length = try readInteger(&buffer, prefix: 7)
        guard let bytes = buffer.readBytes(length: length) else {
            throw WireDecodingError("HPACK string of \(length) bytes runs past the block")
        }
        return try first & 0x80 != 0 ? HuffmanDecoder.shared.decode(bytes) : bytes
    }
}

/// Decodes the static Huffman code of RFC 7541 Appendix B by walking a binary tree bit by bit (header values are
/// short and this decoder runs only while recording).
struct HuffmanDecoder: Sendable {
    static let shared = HuffmanDecoder()

    /// Two slots per node (bit 0, bit 1): 0 = no such code, > 0 = next node, < 0 = symbol `-(slot + 1)`.
    private let slots: [Int32]

    private init() {
        var slots: [Int32] = [0, 0]
        for (symbol, entry) in HPACKTables.huffmanCodes.enumerated() {
            var node = 0
            for i in stride(from: Int(entry.length) - 1, through: 0, by: -1) {
                let slot = node * 2 + Int((entry.code >> UInt32(i)) & 1)
                if i == 0 {
                    slots[slot] = -Int32(symbol + 1)
                } else {
                    if slots[slot] == 0 {
                        slots.append(contentsOf: [0, 0])
                        slots[slot] = Int32(slots.count / 2 - 1)
                    }
                    node = Int(slots[slot])
                }
            }
        }
        self.slots = slots
    }

    func decode(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 8 / 5)
        var node = 0
        var pendingBits = 0
        var pendingAllOnes = true
        for byte in bytes {
            for i in stride(from: 7, through: 0, by: -1) {
                let bit = Int((byte >> UInt8(i)) & 1)
                let next = slots[node * 2 + bit]
                if next < 0 {
                    let symbol = Int(-next - 1)
                    guard symbol != 256 else { throw WireDecodingError("HPACK Huffman string contains EOS") }
                    out.append(UInt8(symbol))
                    node = 0
                    pendingBits = 0
                    pendingAllOnes = true
                } else if next == 0 {
                    throw WireDecodingError("invalid HPACK Huffman code")
                } else {
                    node = Int(next)
                    pendingBits += 1
                    if bit == 0 { pendingAllOnes = false }
                }
            }
        }
        // RFC 7541 §5.2: padding is fewer than 8 bits, all ones (a prefix of EOS).
        guard pendingBits < 8, pendingAllOnes else { throw WireDecodingError("invalid HPACK Huffman padding") }
        return out
    }
}
