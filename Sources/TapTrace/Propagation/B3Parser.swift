/// Parses Zipkin B3 propagation: the single `b3` header and the multi `x-b3-*` headers.
///
/// Follows openzipkin/b3-propagation: trace ids are 16 or 32 lower-case hex digits (a 64-bit id is left-padded to
/// 128 bits), span ids 16, zero ids are invalid. A B3 value may carry only a sampling decision and no ids (`b3: 0`
/// is "deny"); that is valid but yields no context, which is why results are a ``Result`` rather than an optional.
public enum B3Parser {
    /// The single-header form's metadata key.
    public static let singleHeaderName = "b3"
    /// Multi-header form: the trace id.
    public static let traceIDHeaderName = "x-b3-traceid"
    /// Multi-header form: the caller's span id.
    public static let spanIDHeaderName = "x-b3-spanid"
    /// Multi-header form: the caller's parent span id (optional).
    public static let parentSpanIDHeaderName = "x-b3-parentspanid"
    /// Multi-header form: the sampling decision, `1`/`0` (or legacy `true`/`false`); absent means deferred.
    public static let sampledHeaderName = "x-b3-sampled"
    /// Multi-header form: `1` means debug, which implies sampled.
    public static let flagsHeaderName = "x-b3-flags"

    /// What a B3 value said.
    public enum Result: Hashable, Sendable {
        /// Ids and a sampling decision: the caller's context. A deferred decision reads as not sampled.
        case context(TraceContext)
        /// Only a sampling decision, no ids: nothing to join, and nothing wrong.
        case samplingOnly(sampled: Bool)
        /// The value is malformed; `header` names the metadata key at fault.
        case invalid(header: String)
    }

    /// The multi-header values as they arrived, each nil when absent.
    public struct MultiHeaders: Hashable, Sendable {
        /// `x-b3-traceid`.
        public var traceID: String?
        /// `x-b3-spanid`.
        public var spanID: String?
        /// `x-b3-parentspanid`.
        public var parentSpanID: String?
        /// `x-b3-sampled`.
        public var sampled: String?
        /// `x-b3-flags`.
        public var flags: String?

        /// Creates the set from explicit values.
        public init(
            traceID: String? = nil,
            spanID: String? = nil,
            parentSpanID: String? = nil,
            sampled: String? = nil,
            flags: String? = nil
        ) {
            self.traceID = traceID
            self.spanID = spanID
            self.parentSpanID = parentSpanID
            self.sampled = sampled
            self.flags = flags
        }

        /// Picks the `x-b3-*` values out of request metadata (names already lower-case); the first of a repeated
        /// key wins.
        public init(metadata: [(name: String, value: String)]) {
            self.init()
            for (name, value) in metadata {
                switch name {
                case B3Parser.traceIDHeaderName where traceID == nil: traceID = value
                case B3Parser.spanIDHeaderName where spanID == nil: spanID = value
                case B3Parser.parentSpanIDHeaderName where parentSpanID == nil: parentSpanID = value
                case B3Parser.sampledHeaderName where sampled == nil: sampled = value
                case B3Parser.flagsHeaderName where flags == nil: flags = value
                default: break
                }
            }
        }

        /// True when none of the headers is present.
        public var isEmpty: Bool {
            traceID == nil && spanID == nil && parentSpanID == nil && sampled == nil && flags == nil
        }
    }

    /// Parses a single `b3` value: `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or a lone `{sampled}`.
    ///
    /// `sampled` is `1` (accept), `0` (deny) or `d` (debug, implies accept). Surrounding spaces and tabs are
    /// ignored. ``TraceContext/parentSpanID`` is the header's span id (the caller's span); the header's parent
    /// span id is validated and then dropped.
    public static func parse(single value: String) -> Result {
        let invalid = Result.invalid(header: singleHeaderName)
        let bytes = HeaderValueText.trimmedBytes(value)
        let fields = bytes.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        if fields.count == 1 {
            guard let sampled = singleSamplingState(fields[0]) else { return invalid }
            return .samplingOnly(sampled: sampled)
        }
        guard fields.count <= 4,
            let traceID = traceID(fields[0]),
            let spanID = spanID(fields[1])
        else { return invalid }
        var sampled = false
        if fields.count >= 3 {
            guard let state = singleSamplingState(fields[2]) else { return invalid }
            sampled = state
        }
        if fields.count == 4 {
            guard self.spanID(fields[3]) != nil else { return invalid }
        }
        return .context(TraceContext(traceID: traceID, parentSpanID: spanID, sampled: sampled, format: .b3))
    }

    /// Parses the multi-header form; nil when no `x-b3-*` header is present.
    ///
    /// `x-b3-traceid` and `x-b3-spanid` come together or not at all; `x-b3-sampled` is `1`/`0`/`true`/`false`;
    /// `x-b3-flags: 1` means debug (sampled), any other flags value is ignored as the B3 spec allows.
    /// ``TraceContext/parentSpanID`` is `x-b3-spanid` (the caller's span).
    public static func parse(_ headers: MultiHeaders) -> Result? {
        guard !headers.isEmpty else { return nil }

        let debug = headers.flags.map { HeaderValueText.trimmedBytes($0) == [UInt8(ascii: "1")] } ?? false
        var sampled = debug
        if let value = headers.sampled {
            switch HeaderValueText.trimmedBytes(value) {
            case Array("1".utf8), Array("true".utf8): sampled = true
            case Array("0".utf8), Array("false".utf8): break
            default: return .invalid(header: sampledHeaderName)
            }
        }

        guard let traceIDValue = headers.traceID else {
            if headers.spanID != nil { return .invalid(header: spanIDHeaderName) }
            if headers.parentSpanID != nil { return .invalid(header: parentSpanIDHeaderName) }
            return .samplingOnly(sampled: sampled)
        }
        guard let traceID = traceID(HeaderValueText.trimmedBytes(traceIDValue)) else {
            return .invalid(header: traceIDHeaderName)
        }
        guard let spanIDValue = headers.spanID, let spanID = spanID(HeaderValueText.trimmedBytes(spanIDValue))
        else { return .invalid(header: spanIDHeaderName) }
        if let parentValue = headers.parentSpanID {
            guard self.spanID(HeaderValueText.trimmedBytes(parentValue)) != nil else {
                return .invalid(header: parentSpanIDHeaderName)
            }
        }
        return .context(TraceContext(traceID: traceID, parentSpanID: spanID, sampled: sampled, format: .b3))
    }

    private static func traceID(_ digits: some Collection<UInt8>) -> TraceID? {
        guard digits.count == 16 || digits.count == 32,
            let id = HexParsing.traceID(digits, .lowerOnly), id.isValid
        else { return nil }
        return id
    }

    private static func spanID(_ digits: some Collection<UInt8>) -> SpanID? {
        guard digits.count == 16, let value = HexParsing.uint64(digits, .lowerOnly), value != 0 else { return nil }
        return SpanID(value)
    }

    /// `1` and `d` sample, `0` denies; nil for anything else.
    private static func singleSamplingState(_ field: some Collection<UInt8>) -> Bool? {
        guard field.count == 1, let byte = field.first else { return nil }
        switch byte {
        case UInt8(ascii: "1"), UInt8(ascii: "d"): return true
        case UInt8(ascii: "0"): return false
        default: return nil
        }
    }
}
