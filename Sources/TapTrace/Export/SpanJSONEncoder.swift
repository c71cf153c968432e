/// Encodes a ``Span`` as one line of the span log (`--spans`, DESIGN.md "Span log format").
///
/// Keys come in a fixed order: `traceId`, `spanId`, `parentSpanId` (absent for a root span), `name`, `kind`,
/// `startTimeUnixNano`, `endTimeUnixNano`, `status` (`code`, then `message` when set), `attributes` (sorted by
/// key), `events` (absent when empty; each `name`, `timeUnixNano`, `attributes`). Times are JSON integers. Attribute
/// values map as: int → integer, double → number (NaN and ±infinity, which JSON lacks, → the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"`), bool → `true`/`false`, string → string, string array → array of strings.
///
/// Hand-written rather than `JSONEncoder`: it runs once per RPC on the export path, appends into a caller's
/// buffer, and needs no Foundation. The output never contains a raw newline (strings escape it), so a line is a span.
public enum SpanJSONEncoder {
    /// The span as one JSON object, without a trailing newline: the sink adds the line separator.
    public static func encode(_ span: Span) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(512)
        encode(span, into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// How to write one attribute key sequence: the positions that put it in key order, and each key already
    /// rendered as JSON (`"key":`, with the separating comma before all but the first).
    struct AttributeLayout: Sendable {
        var order: [Int]
        var renderedKeys: [[UInt8]]

        init(_ attributes: SpanAttributes) {
            let pairs = attributes.pairs
            order = pairs.indices.sorted { pairs[$0].key < pairs[$1].key }
            renderedKeys = order.enumerated().map { index, position in
                var bytes: [UInt8] = []
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                SpanJSONEncoder.string(pairs[position].key, into: &bytes)
                bytes.append(UInt8(ascii: ":"))
                return bytes
            }
        }
    }

    /// The layouts of the last few attribute key sequences a writer encoded. Calls of one kind carry the same keys,
    /// set in the same order by the same code, so checking that a span's keys are a cached sequence (the keys are
    /// usually the same string literals, which compare equal without reading their bytes) replaces sorting them and
    /// escaping each key again.
    public struct KeyOrderCache: Sendable {
        struct Entry: Sendable {
            /// The key sequence as spans carry it.
            var keys: [String]
            var layout: AttributeLayout
        }
        /// Most recently used first.
        var entries: [Entry] = []
        static let capacity = 8
        public init() {}

        /// The layout for the keys of `attributes`.
        mutating func layout(of attributes: SpanAttributes) -> AttributeLayout {
            let pairs = attributes.pairs
            search: for (index, entry) in entries.enumerated() where entry.keys.count == pairs.count {
                for position in pairs.indices where entry.keys[position] != pairs[position].key { continue search }
                if index > 0 { entries.swapAt(index, 0) }
                return entry.layout
            }
            let layout = AttributeLayout(attributes)
            if !pairs.isEmpty {
                if entries.count == Self.capacity { entries.removeLast() }
                entries.insert(Entry(keys: pairs.map(\.key), layout: layout), at: 0)
            }
            return layout
        }
    }

    /// Appends the span as one JSON object to `bytes`, without a trailing newline: the sink adds the separator.
    public static func encode(_ span: Span, into bytes: inout [UInt8]) {
        var cache = KeyOrderCache()
        encode(span, into: &bytes, cache: &cache)
    }

    /// Appends the span to `bytes`, taking the attribute order from `cache` when the keys are the same as last time.
    public static func encode(_ span: Span, into bytes: inout [UInt8], cache: inout KeyOrderCache) {
        bytes.append(UInt8(ascii: "{"))
        key("traceId", into: &bytes, first: true)
        bytes.append(UInt8(ascii: "\""))
        hex(span.traceID.high, into: &bytes)
        hex(span.traceID.low, into: &bytes)
        bytes.append(UInt8(ascii: "\""))
        key("spanId", into: &bytes)
        quotedHex(span.spanID.value, into: &bytes)
        if let parent = span.parentSpanID {
            key("parentSpanId", into: &bytes)
            quotedHex(parent.value, into: &bytes)
        }
        key("name", into: &bytes)
        string(span.name, into: &bytes)
        key("kind", into: &bytes)
        string(span.kind.rawValue, into: &bytes)
        key("startTimeUnixNano", into: &bytes)
        unsigned(span.startTimeUnixNano, into: &bytes)
        key("endTimeUnixNano", into: &bytes)
        unsigned(span.endTimeUnixNano, into: &bytes)

        key("status", into: &bytes)
        bytes.append(UInt8(ascii: "{"))
        key("code", into: &bytes, first: true)
        string(span.status.code.rawValue, into: &bytes)
        if let message = span.status.message {
            key("message", into: &bytes)
            string(message, into: &bytes)
        }
        bytes.append(UInt8(ascii: "}"))

        key("attributes", into: &bytes)
        attributes(span.attributes, layout: cache.layout(of: span.attributes), into: &bytes)

        if !span.events.isEmpty {
            key("events", into: &bytes)
            bytes.append(UInt8(ascii: "["))
            for (index, event) in span.events.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                bytes.append(UInt8(ascii: "{"))
                key("name", into: &bytes, first: true)
                string(event.name, into: &bytes)
                key("timeUnixNano", into: &bytes)
                unsigned(event.timeUnixNano, into: &bytes)
                key("attributes", into: &bytes)
                attributes(event.attributes, layout: AttributeLayout(event.attributes), into: &bytes)
                bytes.append(UInt8(ascii: "}"))
            }
            bytes.append(UInt8(ascii: "]"))
        }
        bytes.append(UInt8(ascii: "}"))
    }

    // MARK: - Pieces

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// `,"name":` (or without the comma for the first key of an object). Key names here need no escaping.
    private static func key(_ name: StaticString, into bytes: inout [UInt8], first: Bool = false) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    /// The attributes as a JSON object, keys and order from `layout`.
    private static func attributes(_ attributes: SpanAttributes, layout: AttributeLayout, into bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "{"))
        let pairs = attributes.pairs
        for (index, position) in layout.order.enumerated() {
            bytes.append(contentsOf: layout.renderedKeys[index])
            value(pairs[position].value, into: &bytes)
        }
        bytes.append(UInt8(ascii: "}"))
    }

    private static func value(_ value: AttributeValue, into bytes: inout [UInt8]) {
        switch value {
        case .string(let text):
            string(text, into: &bytes)
        case .int(let number):
            if number < 0 { bytes.append(UInt8(ascii: "-")) }
            unsigned(number.magnitude, into: &bytes)
        case .double(let number):
            if number.isNaN {
                string("NaN", into: &bytes)
            } else if number.isInfinite {
                string(number < 0 ? "-Infinity" : "Infinity", into: &bytes)
            } else {
                // Swift prints the shortest round-tripping form (`0.1`, `1e-07`, `1e+20`), all valid JSON numbers.
                bytes.append(contentsOf: number.description.utf8)
            }
        case .bool(let flag):
            bytes.append(contentsOf: (flag ? "true" : "false").utf8)
        case .stringArray(let texts):
            bytes.append(UInt8(ascii: "["))
            for (index, text) in texts.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                string(text, into: &bytes)
            }
            bytes.append(UInt8(ascii: "]"))
        }
    }

    /// A JSON string literal (RFC 8259 §7): `"` and `\` escaped, C0 controls as short escapes or `\u00XX`.
    /// Everything else, including non-ASCII, is copied as UTF-8 (a Swift string is always valid UTF-8).
    static func string(_ text: String, into bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        // Fast path: most names and values need no escape; copy their UTF-8 in one go.
        let copied = text.utf8.withContiguousStorageIfAvailable { utf8 -> Bool in
            guard !utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else {
                return false
            }
            bytes.append(contentsOf: utf8)
            return true
        }
        if copied == true {
            bytes.append(UInt8(ascii: "\""))
            return
        }
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case UInt8(ascii: "\n"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\r"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case UInt8(ascii: "\t"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x00..<0x20:
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(hexDigits[Int(byte >> 4)])
                bytes.append(hexDigits[Int(byte & 0xF)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A decimal JSON integer, its digits formed in a small stack buffer and appended at once.
    private static func unsigned(_ number: UInt64, into bytes: inout [UInt8]) {
        guard number >= 10 else {
            bytes.append(UInt8(ascii: "0") + UInt8(number))
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var start = digits.count
            var rest = number
            while rest > 0 {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    /// 16 lower-case hex digits.
    private static func hex(_ number: UInt64, into bytes: inout [UInt8]) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { digits in
            var rest = number
            for index in stride(from: 15, through: 0, by: -1) {
                let digit = UInt8(truncatingIfNeeded: rest & 0xF)
                digits[index] = digit < 10 ? UInt8(ascii: "0") + digit : UInt8(ascii: "a") - 10 + digit
                rest >>= 4
            }
            bytes.append(contentsOf: UnsafeBufferPointer(digits))
        }
    }

    /// 16 hex digits in quotes.
    private static func quotedHex(_ number: UInt64, into bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        hex(number, into: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }
}
