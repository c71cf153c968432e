/// Parses the W3C Trace Context `traceparent` header (and carries `tracestate` along).
///
/// Follows W3C Trace Context Level 1 §3.2: `version-traceid-parentid-flags`, lower-case hex only, the all-zero trace
/// id and parent id are invalid, version `ff` is invalid. Version `00` must be exactly 55 characters; a later
/// version may append `-` and more fields, which are ignored, so that a newer caller still joins the trace.
public enum TraceparentParser {
    /// The metadata key of the trace parent.
    public static let headerName = "traceparent"
    /// The metadata key of the vendor trace state.
    public static let stateHeaderName = "tracestate"

    private static let version00Length = 55
    private static let dash = UInt8(ascii: "-")

    /// Returns the caller's context from a `traceparent` value, or nil when the value is not valid.
    ///
    /// - Parameters:
    ///   - traceparent: the header value; surrounding spaces and tabs (HTTP optional whitespace) are ignored.
    ///   - tracestate: the `tracestate` value, kept verbatim in ``TraceContext/traceState`` (nil or empty: none).
    ///     It is not validated: the tap never rewrites it, only records it.
    /// - Returns: a context with format ``TraceContext/Format/w3c``, ``TraceContext/parentSpanID`` = the header's
    ///   parent id, and ``TraceContext/sampled`` = bit 0 of the flags.
    public static func parse(_ traceparent: String, tracestate: String? = nil) -> TraceContext? {
        let bytes = HeaderValueText.trimmedBytes(traceparent)
        guard bytes.count >= version00Length else { return nil }

        guard let version = HexParsing.uint64(bytes[0..<2], .lowerOnly), version != 0xFF else { return nil }
        if version == 0 {
            guard bytes.count == version00Length else { return nil }
        } else if bytes.count > version00Length {
            // A future version may only extend the header after a separator.
            guard bytes[version00Length] == dash else { return nil }
        }
        guard bytes[2] == dash, bytes[35] == dash, bytes[52] == dash else { return nil }

        guard let traceID = HexParsing.traceID(bytes[3..<35], .lowerOnly), traceID.isValid,
            let parent = HexParsing.uint64(bytes[36..<52], .lowerOnly), parent != 0,
            let flags = HexParsing.uint64(bytes[53..<55], .lowerOnly)
        else { return nil }

        let state = tracestate.flatMap { $0.isEmpty ? nil : $0 }
        return TraceContext(
            traceID: traceID,
            parentSpanID: SpanID(parent),
            sampled: flags & 1 == 1,
            format: .w3c,
            traceState: state
        )
    }
}
