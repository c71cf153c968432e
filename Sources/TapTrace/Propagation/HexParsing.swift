/// Hex-digit parsing shared by the propagation parsers.
///
/// The formats differ in what they accept (W3C and B3 want lower-case only, Jaeger clients write either case and
/// drop leading zeros), so the case rule and the width are parameters rather than baked in.
enum HexParsing {
    /// Which letter cases a format allows for `a`–`f`.
    enum LetterCase {
        case lowerOnly
        case either
    }

    /// The value of one hex digit, or nil when `byte` is not one under `letterCase`.
    @inline(__always)
    static func digit(_ byte: UInt8, _ letterCase: LetterCase) -> UInt64? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return UInt64(byte &- UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"):
            return UInt64(byte &- UInt8(ascii: "a") &+ 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F") where letterCase == .either:
            return UInt64(byte &- UInt8(ascii: "A") &+ 10)
        default:
            return nil
        }
    }

    /// Parses 1...16 hex digits into a 64-bit value; nil for an empty, over-long or non-hex input.
    static func uint64(_ digits: some Collection<UInt8>, _ letterCase: LetterCase) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 16 else { return nil }
        var value: UInt64 = 0
        for byte in digits {
            guard let d = digit(byte, letterCase) else { return nil }
            value = value << 4 | d
        }
        return value
    }

    /// Parses 1...32 hex digits into a trace id, left-padding shorter inputs with zeros; nil for an empty,
    /// over-long or non-hex input. Zero is returned as a (invalid) id: callers decide what zero means.
    static func traceID(_ digits: some Collection<UInt8>, _ letterCase: LetterCase) -> TraceID? {
        let count = digits.count
        guard count > 0, count <= 32 else { return nil }
        let highCount = max(0, count - 16)
        let highDigits = digits.prefix(highCount)
        let lowDigits = digits.dropFirst(highCount)
        let high: UInt64
        if highCount == 0 {
            high = 0
        } else {
            guard let parsed = uint64(highDigits, letterCase) else { return nil }
            high = parsed
        }
        guard let low = uint64(lowDigits, letterCase) else { return nil }
        return TraceID(high: high, low: low)
    }
}
