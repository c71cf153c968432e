import NIOCore

/// One decoded header block: each field's name and value are ranges of one byte array.
///
/// Decoding fills it without making a `String` or an allocation per field; callers make strings only of the
/// fields they keep. Values are the octets as sent: gRPC C-core peers send `-bin` metadata as "true binary"
/// (0x00 then raw bytes) when both advertise SETTINGS 0xFE03, and a recording must replay exactly what was sent.
public struct HeaderBlock: Sendable {
    private struct Bounds: Sendable {
        var name: Int32
        var value: Int32
        var end: Int32
    }

    /// Names and values, back to back.
    private var bytes: [UInt8] = []
    private var bounds: [Bounds] = []
    /// RFC 7541 §4.1 sizes (name + value + 32) of the fields so far, for the header list limit.
    private(set) var listSize = 0

    public init() {}

    /// A block of these fields (callers that have strings; tests).
    public init(_ fields: [(String, String)]) {
        for (name, value) in fields {
            append(name: Array(name.utf8), value: Array(value.utf8))
        }
    }

    public var count: Int { bounds.count }
    public var isEmpty: Bool { bounds.isEmpty }

    /// The name of field `index` (lower-case on the HTTP/2 wire; a peer sending otherwise is kept as sent).
    public func name(at index: Int) -> String {
        withName(at: index) { String(decoding: $0, as: UTF8.self) }
    }

    /// The value of field `index` as text (octets that are not UTF-8 are repaired).
    public func value(at index: Int) -> String {
        withValue(at: index) { String(decoding: $0, as: UTF8.self) }
    }

    /// The value of field `index`, octet for octet.
    public func valueBytes(at index: Int) -> [UInt8] {
        withValue(at: index) { Array($0) }
    }

    /// True when field `index` is a pseudo-header (its name starts with `:`).
    public func isPseudo(at index: Int) -> Bool {
        let b = bounds[index]
        return b.value > b.name && bytes[Int(b.name)] == UInt8(ascii: ":")
    }

    /// The value of the first field named `name` (lower-case; names are compared ignoring ASCII case).
    public func first(name: String) -> String? {
        firstIndex(name: name).map { value(at: $0) }
    }

    /// The index of the first field named `name` (lower-case; names are compared ignoring ASCII case).
    func firstIndex(name: String) -> Int? {
        var wanted = name
        return wanted.withUTF8 { wanted in
            bytes.withUnsafeBufferPointer { bytes in
                for (index, b) in bounds.enumerated() where Int(b.value - b.name) == wanted.count {
                    var offset = Int(b.name)
                    var matches = true
                    for lower in wanted {
                        let sent = bytes[offset]
                        offset += 1
                        guard sent == lower || (sent >= 0x41 && sent <= 0x5A && sent | 0x20 == lower) else {
                            matches = false
                            break
                        }
                    }
                    if matches { return index }
                }
                return nil
            }
        }
    }

    /// Runs `body` on the octets of field `index`'s name.
    func withName<R>(at index: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let b = bounds[index]
        return bytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[Int(b.name)..<Int(b.value)])) }
    }

    /// Runs `body` on the octets of field `index`'s value.
    func withValue<R>(at index: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        let b = bounds[index]
        return bytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[Int(b.value)..<Int(b.end)])) }
    }

    /// The fields as name strings and exact values (events for recorders).
    public var rawFields: [RawHeaderField] {
        bounds.indices.map { RawHeaderField(name: name(at: $0), value: valueBytes(at: $0)) }
    }

    mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        bounds.removeAll(keepingCapacity: true)
        listSize = 0
    }

    mutating func append(name: [UInt8], value: [UInt8]) {
        let start = bytes.count
        bytes.append(contentsOf: name)
        let middle = bytes.count
        bytes.append(contentsOf: value)
        close(start: start, middle: middle)
    }

    /// Marks the bytes from `start` as one field whose value begins at `middle`.
    fileprivate mutating func close(start: Int, middle: Int) {
        bounds.append(Bounds(name: Int32(start), value: Int32(middle), end: Int32(bytes.count)))
        listSize += bytes.count - start + 32
    }

    fileprivate var byteCount: Int { bytes.count }

    fileprivate mutating func append(_ raw: UnsafeRawBufferPointer) {
        bytes.append(contentsOf: raw)
    }

    fileprivate mutating func appendHuffman(_ raw: UnsafeRawBufferPointer) throws {
        try HuffmanDecoder.shared.decode(raw, into: &bytes)
    }

    /// The octets from `start` to `end` (a table entry being made).
    fileprivate func slice(_ start: Int, _ end: Int) -> [UInt8] { Array(bytes[start..<end]) }
}

/// An HPACK (RFC 7541) decoder that keeps names and values as octets.
///
/// It is the tap's only header decoder: it fills a `HeaderBlock` with no per-field allocation (a table entry is
/// allocated once, when it is inserted), walks the Huffman code four bits at a time, and its dynamic table counts
/// real octets, as the encoder's does.
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
    /// Largest header list (RFC 7541 §4.1 sizes) one block may decode to; a small block can expand to far more.
    public var maxHeaderListSize: Int
    /// Size the encoder currently uses, changed by dynamic table size updates.
    private var allowedLength: Int
    /// Newest entry last.
    private var entries: [Entry] = []
    private var length = 0

    /// The static table (RFC 7541 Appendix A) as octets; index 0 is unused.
    private static let statics: [Entry] = HPACKTables.staticEntries.map {
        Entry(name: Array($0.name.utf8), value: Array($0.value.utf8))
    }

    /// Creates a decoder with the default 4096-octet table.
    public init(maxDynamicTableLength: Int = 4096, maxHeaderListSize: Int = 1 << 20) {
        self.maxDynamicTableLength = maxDynamicTableLength
        self.allowedLength = maxDynamicTableLength
        self.maxHeaderListSize = maxHeaderListSize
    }

    /// Decodes one complete header block.
    ///
    /// - Throws: `WireDecodingError` on malformed input; the table state is undefined afterwards.
    public mutating func decode(_ fragment: ByteBuffer) throws -> [RawHeaderField] {
        var block = HeaderBlock()
        try decode(fragment, into: &block)
        return block.rawFields
    }

    /// Decodes one complete header block into `block`, which is emptied first (its memory is reused).
    ///
    /// - Throws: `WireDecodingError` on malformed input; the table state is undefined afterwards.
    public mutating func decode(_ fragment: ByteBuffer, into block: inout HeaderBlock) throws {
        block.removeAll()
        try fragment.withUnsafeReadableBytes { raw in
            var reader = Reader(raw: raw)
            while let first = reader.peek() {
                if first & 0x80 != 0 {
                    let index = try reader.integer(prefix: 7)
                    guard index != 0 else { throw WireDecodingError("HPACK index 0") }
                    let entry = try lookup(index)
                    block.append(name: entry.name, value: entry.value)
                } else if first & 0xE0 == 0x20 {
                    let size = try reader.integer(prefix: 5)
                    guard size <= maxDynamicTableLength else {
                        throw WireDecodingError(
                            "HPACK table size update to \(size) above the limit \(maxDynamicTableLength)")
                    }
                    allowedLength = size
                    evict(toFit: 0)
                    continue
                } else {
                    // 01xxxxxx: with incremental indexing; 0000xxxx / 0001xxxx: without / never indexed.
                    let indexing = first & 0xC0 == 0x40
                    let nameIndex = try reader.integer(prefix: indexing ? 6 : 4)
                    let start = block.byteCount
                    if nameIndex == 0 {
                        try reader.string(into: &block)
                    } else {
                        let name = try lookup(nameIndex).name
                        name.withUnsafeBytes { block.append($0) }
                    }
                    let middle = block.byteCount
                    try reader.string(into: &block)
                    block.close(start: start, middle: middle)
                    if indexing {
                        insert(Entry(name: block.slice(start, middle), value: block.slice(middle, block.byteCount)))
                    }
                }
                guard block.listSize <= maxHeaderListSize else {
                    throw WireDecodingError("HPACK header list larger than \(maxHeaderListSize) bytes")
                }
            }
        }
    }

    private func lookup(_ index: Int) throws -> Entry {
        if index < Self.statics.count { return Self.statics[index] }
        let dynamic = index - Self.statics.count
        guard dynamic < entries.count else { throw WireDecodingError("HPACK index \(index) beyond the table") }
        return entries[entries.count - 1 - dynamic]
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

    /// Reads HPACK integers and strings from a header block in memory.
    private struct Reader {
        let raw: UnsafeRawBufferPointer
        var offset = 0

        func peek() -> UInt8? { offset < raw.count ? raw[offset] : nil }

        /// RFC 7541 §5.1, bounded so a hostile encoding cannot overflow.
        mutating func integer(prefix: Int) throws -> Int {
            guard offset < raw.count else { throw WireDecodingError("HPACK block ends in an integer") }
            let mask = UInt8((1 << prefix) - 1)
            var value = Int(raw[offset] & mask)
            offset += 1
            guard value == Int(mask) else { return value }
            var shift = 0
            while true {
                guard offset < raw.count else { throw WireDecodingError("HPACK block ends in an integer") }
                let byte = raw[offset]
                offset += 1
                value += Int(byte & 0x7F) << shift
                shift += 7
                guard shift <= 28 else { throw WireDecodingError("HPACK integer too large") }
                if byte & 0x80 == 0 { return value }
            }
        }

        /// RFC 7541 §5.2: a string literal, appended to `block` as octets (Huffman-decoded when so marked).
        mutating func string(into block: inout HeaderBlock) throws {
            guard offset < raw.count else { throw WireDecodingError("HPACK block ends before a string") }
            let huffman = raw[offset] & 0x80 != 0
            let length = try integer(prefix: 7)
            guard length <= raw.count - offset else {
                throw WireDecodingError("HPACK string of \(length) bytes runs past the block")
            }
            let bytes = UnsafeRawBufferPointer(rebasing: raw[offset..<offset + length])
            offset += length
            if huffman {
                try block.appendHuffman(bytes)
            } else {
                block.append(bytes)
            }
        }
    }
}

/// Decodes the static Huffman code of RFC 7541 Appendix B four bits at a time.
///
/// A state is a node of the code's binary tree; for every state and 4-bit nibble a table gives the next state and
/// the symbol completed on the way, if any (the shortest code is 5 bits, so a nibble completes at most one).
struct HuffmanDecoder: Sendable {
    static let shared = HuffmanDecoder()

    /// Per state × nibble: bits 0–8 the next state, bit 9 a symbol was completed, bits 10–17 the symbol,
    /// bit 18 the nibble is invalid (it completes EOS).
    private let transitions: [UInt32]
    /// Per state: a string may end here (the root, or up to 7 one-bits into a code: padding, RFC 7541 §5.2).
    private let accepting: [Bool]

    private static let emits: UInt32 = 1 << 9
    private static let fails: UInt32 = 1 << 18

    private init() {
        // The tree, two slots per node (bit 0, bit 1): 0 = none yet, > 0 = child node, < 0 = symbol -(slot + 1).
        var slots: [Int32] = [0, 0]
        var depth = [0]
        var allOnes = [true]
        for (symbol, entry) in HPACKTables.huffmanCodes.enumerated() {
            var node = 0
            for i in stride(from: Int(entry.length) - 1, through: 0, by: -1) {
                let bit = Int((entry.code >> UInt32(i)) & 1)
                let slot = node * 2 + bit
                if i == 0 {
                    slots[slot] = -Int32(symbol + 1)
                } else {
                    if slots[slot] == 0 {
                        slots.append(contentsOf: [0, 0])
                        slots[slot] = Int32(slots.count / 2 - 1)
                        depth.append(depth[node] + 1)
                        allOnes.append(allOnes[node] && bit == 1)
                    }
                    node = Int(slots[slot])
                }
            }
        }
        let nodes = slots.count / 2
        precondition(nodes <= 512, "Huffman states must fit 9 bits")
        var transitions = [UInt32](repeating: 0, count: nodes * 16)
        for state in 0..<nodes {
            for nibble in 0..<16 {
                var node = state
                var result: UInt32 = 0
                for i in stride(from: 3, through: 0, by: -1) {
                    let next = slots[node * 2 + ((nibble >> i) & 1)]
                    if next < 0 {
                        let symbol = Int(-next - 1)
                        if symbol == 256 {
                            result |= Self.fails
                            break
                        }
                        result |= Self.emits | UInt32(symbol) << 10
                        node = 0
                    } else {
                        node = Int(next)
                    }
                }
                transitions[state * 16 + nibble] = result | UInt32(node)
            }
        }
        self.transitions = transitions
        accepting = (0..<nodes).map { $0 == 0 || (allOnes[$0] && depth[$0] <= 7) }
    }

    /// Appends the decoded octets of `input` to `out`.
    func decode(_ input: UnsafeRawBufferPointer, into out: inout [UInt8]) throws {
        out.reserveCapacity(out.count + input.count * 8 / 5 + 1)
        var state = 0
        try transitions.withUnsafeBufferPointer { table in
            func step(_ nibble: UInt8) throws {
                let t = table[state &* 16 &+ Int(nibble)]
                guard t & Self.fails == 0 else { throw WireDecodingError("HPACK Huffman string contains EOS") }
                if t & Self.emits != 0 { out.append(UInt8(truncatingIfNeeded: t >> 10)) }
                state = Int(t & 0x1FF)
            }
            for byte in input {
                try step(byte >> 4)
                try step(byte & 0x0F)
            }
        }
        guard accepting[state] else { throw WireDecodingError("invalid HPACK Huffman padding") }
    }
}
