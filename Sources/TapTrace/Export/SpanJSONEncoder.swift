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
        var bytes = JSONBytes()
        var cache = KeyOrderCache()
        encode(span, into: &bytes, cache: &cache)
        return bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// How to write one attribute key sequence: the positions that put it in key order, and each key already
    /// rendered as JSON (`"key":`, with the separating comma before all but the first).
    struct AttributeLayout: Sendable {
        var order: [Int]
        /// The rendered keys back to back, in `order`; key `i` ends at `keyEnds[i]`. One array rather than one per
        /// key, so writing them retains nothing.
        var renderedKeys: [UInt8]
        var keyEnds: [Int]

        init(_ attributes: SpanAttributes) {
            let pairs = attributes.pairs
            order = pairs.indices.sorted { pairs[$0].key < pairs[$1].key }
            var bytes = JSONBytes(capacity: 32 * max(1, pairs.count))
            keyEnds = []
            keyEnds.reserveCapacity(order.count)
            for (index, position) in order.enumerated() {
                if index > 0 { bytes.byte(UInt8(ascii: ",")) }
                bytes.string(pairs[position].key)
                bytes.byte(UInt8(ascii: ":"))
                keyEnds.append(bytes.count)
            }
            renderedKeys = bytes.array
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
        var line = JSONBytes()
        encode(span, into: &line, cache: &cache)
        line.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }

    /// Appends the span to `bytes`, taking the attribute order from `cache` when the keys are the same as last time:
    /// what the span log does for every span.
    public static func encode(_ span: Span, into bytes: inout JSONBytes, cache: inout KeyOrderCache) {
        bytes.raw("{\"traceId\":\"")
        bytes.hex(span.traceID.high)
        bytes.hex(span.traceID.low)
        bytes.raw("\",\"spanId\":\"")
        bytes.hex(span.spanID.value)
        if let parent = span.parentSpanID {
            bytes.raw("\",\"parentSpanId\":\"")
            bytes.hex(parent.value)
        }
        bytes.raw("\",\"name\":")
        bytes.string(span.name)
        bytes.raw(",\"kind\":")
        bytes.string(span.kind.rawValue)
        bytes.raw(",\"startTimeUnixNano\":")
        bytes.unsigned(span.startTimeUnixNano)
        bytes.raw(",\"endTimeUnixNano\":")
        bytes.unsigned(span.endTimeUnixNano)
        bytes.raw(",\"status\":{\"code\":")
        bytes.string(span.status.code.rawValue)
        if let message = span.status.message {
            bytes.raw(",\"message\":")
            bytes.string(message)
        }
        bytes.raw("},\"attributes\":")
        attributes(span.attributes, layout: cache.layout(of: span.attributes), into: &bytes)

        if !span.events.isEmpty {
            bytes.raw(",\"events\":[")
            for (index, event) in span.events.enumerated() {
                bytes.raw(index > 0 ? ",{\"name\":" : "{\"name\":")
                bytes.string(event.name)
                bytes.raw(",\"timeUnixNano\":")
                bytes.unsigned(event.timeUnixNano)
                bytes.raw(",\"attributes\":")
                attributes(event.attributes, layout: AttributeLayout(event.attributes), into: &bytes)
                bytes.byte(UInt8(ascii: "}"))
            }
            bytes.byte(UInt8(ascii: "]"))
        }
        bytes.byte(UInt8(ascii: "}"))
    }

    /// The attributes as a JSON object, keys and order from `layout`.
    private static func attributes(_ attributes: SpanAttributes, layout: AttributeLayout, into bytes: inout JSONBytes) {
        bytes.byte(UInt8(ascii: "{"))
        let pairs = attributes.pairs
        layout.renderedKeys.withUnsafeBytes { keys in
            var keyStart = 0
            for (index, position) in layout.order.enumerated() {
                let keyEnd = layout.keyEnds[index]
                bytes.append(UnsafeRawBufferPointer(rebasing: keys[keyStart..<keyEnd]))
                keyStart = keyEnd
                switch pairs[position].value {
                case .string(let text): bytes.string(text)
                case .int(let number): bytes.signed(number)
                case .double(let number): bytes.double(number)
                case .bool(let flag): if flag { bytes.raw("true") } else { bytes.raw("false") }
                case .stringArray(let texts):
                    bytes.byte(UInt8(ascii: "["))
                    for (index, text) in texts.enumerated() {
                        if index > 0 { bytes.byte(UInt8(ascii: ",")) }
                        bytes.string(text)
                    }
                    bytes.byte(UInt8(ascii: "]"))
                }
            }
        }
        bytes.byte(UInt8(ascii: "}"))
    }
}
