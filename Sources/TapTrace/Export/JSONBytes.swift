/// A growable byte buffer that JSON text is written into, with the pieces both JSON encoders need (the span log's
/// and OTLP/JSON's): escaped strings, decimal integers, fixed-width hex.
///
/// Plain stores into memory it owns, one capacity check per piece. Writing a span line into an `[UInt8]` took some
/// sixty appends, each checking the array's uniqueness and capacity; that was most of the span log's cost per call.
/// Non-copyable, so the memory has one owner and is freed with it.
public struct JSONBytes: ~Copyable {
    private var base: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    /// Bytes written.
    public private(set) var count = 0

    /// An empty buffer with room for `capacity` bytes before it grows.
    public init(capacity: Int = 1024) {
        self.capacity = max(capacity, 16)
        base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    /// True when nothing has been written (or everything was removed).
    public var isEmpty: Bool { count == 0 }

    /// The bytes written, valid during `body`.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// A copy of the bytes written.
    public var array: [UInt8] { Array(UnsafeBufferPointer(start: base, count: count)) }

    /// Forgets the bytes written, keeping the memory.
    public mutating func removeAll() { count = 0 }

    // MARK: - Writing

    /// Makes room for `extra` more bytes.
    @inline(__always)
    mutating func reserve(_ extra: Int) {
        if capacity - count < extra { grow(toHold: count + extra) }
    }

    private mutating func grow(toHold needed: Int) {
        var newCapacity = capacity
        while newCapacity < needed { newCapacity *= 2 }
        let newBase = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        newBase.update(from: base, count: count)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    /// One byte.
    @inline(__always)
    public mutating func byte(_ value: UInt8) {
        reserve(1)
        base[count] = value
        count += 1
    }

    /// Bytes copied as they are.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        reserve(bytes.count)
        UnsafeMutableRawPointer(base + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    /// Text copied as it is: structure and keys, which need no escaping.
    mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { append(UnsafeRawBufferPointer($0)) }
    }

    /// Text copied as it is (a number's description, say), which needs no escaping.
    mutating func rawText(_ text: String) {
        var text = text
        text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    /// A JSON string literal (RFC 8259 §7): `"` and `\` escaped, C0 controls as short escapes or `\u00XX`.
    /// Everything else, including non-ASCII, is copied as UTF-8 (a Swift string is always valid UTF-8).
    mutating func string(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            // Most names and values need no escape: find the first byte that does and copy up to it in one go.
            let plain = utf8.firstIndex { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") } ?? utf8.count
            // At most 6 bytes per escaped byte (`\u00XX`) and the quotes: one check for the whole string.
            reserve(plain + (utf8.count - plain) * 6 + 2)
            base[count] = UInt8(ascii: "\"")
            var at = count + 1
            if plain > 0 { (base + at).update(from: utf8.baseAddress!, count: plain) }
            at += plain
            for byte in utf8[plain...] {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"):
                    base[at] = UInt8(ascii: "\\")
                    base[at + 1] = Self.shortEscape(byte)
                    at += 2
                case 0x00..<0x20:
                    base[at] = UInt8(ascii: "\\")
                    base[at + 1] = UInt8(ascii: "u")
                    base[at + 2] = UInt8(ascii: "0")
                    base[at + 3] = UInt8(ascii: "0")
                    base[at + 4] = Self.hexDigit(byte >> 4)
                    base[at + 5] = Self.hexDigit(byte & 0xF)
                    at += 6
                default:
                    base[at] = byte
                    at += 1
                }
            }
            base[at] = UInt8(ascii: "\"")
            count = at + 1
        }
    }

    /// A decimal integer, written straight into place.
    mutating func unsigned(_ number: UInt64) {
        var digits = 1
        var rest = number
        while rest >= 10 {
            digits += 1
            rest /= 10
        }
        reserve(digits)
        rest = number
        var at = count + digits
        repeat {
            at -= 1
            base[at] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: rest % 10)
            rest /= 10
        } while rest > 0
        count += digits
    }

    /// A decimal integer in quotes: how proto3 JSON writes 64-bit integers.
    mutating func quotedUnsigned(_ number: UInt64) {
        byte(UInt8(ascii: "\""))
        unsigned(number)
        byte(UInt8(ascii: "\""))
    }

    /// `[a,b,...]`, each element written by `element`.
    mutating func array<S: Sequence>(_ elements: S, _ element: (inout JSONBytes, S.Element) -> Void) {
        byte(UInt8(ascii: "["))
        var first = true
        for item in elements {
            if !first { byte(UInt8(ascii: ",")) }
            first = false
            element(&self, item)
        }
        byte(UInt8(ascii: "]"))
    }

    /// A signed decimal integer.
    mutating func signed(_ number: Int64) {
        if number < 0 { byte(UInt8(ascii: "-")) }
        unsigned(number.magnitude)
    }

    /// 16 lower-case hex digits.
    mutating func hex(_ number: UInt64) {
        reserve(16)
        for index in 0..<16 {
            base[count + index] = Self.hexDigit(UInt8(truncatingIfNeeded: number >> UInt64(60 - 4 * index)) & 0xF)
        }
        count += 16
    }

    /// A double as JSON allows: Swift's shortest round-tripping form (`0.1`, `1e-07`, `1e+20`, all valid JSON
    /// numbers); NaN and ±infinity, which JSON lacks, as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (as
    /// proto3's JSON mapping writes them).
    mutating func double(_ number: Double) {
        if number.isNaN {
            raw("\"NaN\"")
        } else if number.isInfinite {
            if number < 0 { raw("\"-Infinity\"") } else { raw("\"Infinity\"") }
        } else {
            rawText(number.description)
        }
    }

    /// The letter after `\` for the characters with a two-character escape (`"` and `\` stand for themselves).
    @inline(__always)
    private static func shortEscape(_ byte: UInt8) -> UInt8 {
        switch byte {
        case UInt8(ascii: "\n"): UInt8(ascii: "n")
        case UInt8(ascii: "\r"): UInt8(ascii: "r")
        case UInt8(ascii: "\t"): UInt8(ascii: "t")
        default: byte
        }
    }

    @inline(__always)
    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") - 10 + value
    }
}
