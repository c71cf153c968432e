/// Byte-level clean-up of metadata values before a propagation parser reads them.
enum HeaderValueText {
    /// The UTF-8 bytes of `value` without surrounding spaces and tabs (HTTP optional whitespace).
    static func trimmedBytes(_ value: String) -> [UInt8] {
        let bytes = Array(value.utf8)
        guard let first = bytes.firstIndex(where: { !isOWS($0) }),
            let last = bytes.lastIndex(where: { !isOWS($0) })
        else { return [] }
        if first == 0 && last == bytes.count - 1 { return bytes }
        return Array(bytes[first...last])
    }

    /// Decodes `%XX` escapes (either hex case); nil when a `%` is not followed by two hex digits.
    ///
    /// Jaeger's HTTP propagator URL-encodes `uber-trace-id` and baggage values, so `:` may arrive as `%3A`.
    /// `+` is left alone: it only means space in form encoding, and none of these values contain spaces.
    static func percentDecoded(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.contains(UInt8(ascii: "%")) else { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            let byte = bytes[i]
            if byte == UInt8(ascii: "%") {
                guard i + 2 < bytes.count,
                    let high = HexParsing.digit(bytes[i + 1], .either),
                    let low = HexParsing.digit(bytes[i + 2], .either)
                else { return nil }
                out.append(UInt8(high << 4 | low))
                i += 3
            } else {
                out.append(byte)
                i += 1
            }
        }
        return out
    }

    @inline(__always)
    private static func isOWS(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
    }
}
