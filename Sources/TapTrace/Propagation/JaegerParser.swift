/// Parses Jaeger's `uber-trace-id` header and its `uberctx-<key>` baggage headers.
///
/// GitLab's LabKit (OpenTracing) sends `<trace-id>:<span-id>:<parent-span-id>:<flags>`, all hex. Jaeger clients drop
/// leading zeros, so ids may be shorter than 16/32 digits; either letter case is accepted, as Jaeger's own clients
/// do. Jaeger's HTTP propagator URL-encodes the value (`%3A` for `:`), so percent escapes are decoded first.
public enum JaegerParser {
    /// The metadata key of the Jaeger trace context.
    public static let headerName = "uber-trace-id"
    /// The prefix of Jaeger baggage metadata keys; the baggage key is the rest of the name.
    public static let baggagePrefix = "uberctx-"

    /// Flag bit: the caller sampled the trace.
    public static let sampledFlag: UInt64 = 0x1
    /// Flag bit: the caller forced sampling for debugging; treated as sampled, as Jaeger itself does.
    public static let debugFlag: UInt64 = 0x2

    /// Returns the caller's context from an `uber-trace-id` value, or nil when the value is not valid.
    ///
    /// Invalid: not exactly four `:`-separated fields, a trace id that is empty, longer than 32 digits or zero,
    /// a span id that is empty, longer than 16 digits or zero, a parent span id that is not 1–16 hex digits
    /// (zero is fine: it means "root"), flags that are not 1–2 hex digits, or a broken percent escape.
    ///
    /// - Parameters:
    ///   - uberTraceID: the header value; surrounding spaces and tabs are ignored.
    ///   - baggage: the caller's baggage, usually from ``baggage(from:)``.
    /// - Returns: a context with format ``TraceContext/Format/jaeger``, ``TraceContext/parentSpanID`` = the
    ///   header's span id (the caller's span; the header's own parent is the caller's parent and is dropped), and
    ///   ``TraceContext/sampled`` set by the sampled or debug flag.
    public static func parse(_ uberTraceID: String, baggage: [String: String] = [:]) -> TraceContext? {
        guard let bytes = HeaderValueText.percentDecoded(HeaderValueText.trimmedBytes(uberTraceID)) else {
            return nil
        }
        let fields = bytes.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        guard fields.count == 4 else { return nil }
        guard let traceID = HexParsing.traceID(fields[0], .either), traceID.isValid,
            let spanID = HexParsing.uint64(fields[1], .either), spanID != 0,
            HexParsing.uint64(fields[2], .either) != nil,
            fields[3].count <= 2, let flags = HexParsing.uint64(fields[3], .either)
        else { return nil }

        return TraceContext(
            traceID: traceID,
            parentSpanID: SpanID(spanID),
            sampled: flags & (sampledFlag | debugFlag) != 0,
            format: .jaeger,
            baggage: baggage
        )
    }

    /// Collects `uberctx-<key>` metadata into a baggage dictionary keyed without the prefix.
    ///
    /// Values are percent-decoded when they hold valid escapes that decode to UTF-8, and kept verbatim otherwise.
    /// An empty key is skipped; when a key repeats, the first value wins.
    ///
    /// - Parameter metadata: request metadata, names already lower-case.
    public static func baggage(from metadata: [(name: String, value: String)]) -> [String: String] {
        var baggage: [String: String] = [:]
        for (name, value) in metadata where name.hasPrefix(baggagePrefix) {
            let key = String(name.dropFirst(baggagePrefix.count))
            guard !key.isEmpty, baggage[key] == nil else { continue }
            baggage[key] = decodedBaggageValue(value)
        }
        return baggage
    }

    private static func decodedBaggageValue(_ value: String) -> String {
        guard value.utf8.contains(UInt8(ascii: "%")),
            let decoded = HeaderValueText.percentDecoded(Array(value.utf8))
        else { return value }
        let text = String(decoding: decoded, as: UTF8.self)
        // A replacement character means the escapes were not UTF-8; the raw value says more than a mangled one.
        return text.utf8.elementsEqual(decoded) ? text : value
    }
}
