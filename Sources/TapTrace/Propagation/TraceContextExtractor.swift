import TapWire

/// What ``TraceContextExtractor`` found in a request's metadata.
public struct TraceContextExtraction: Hashable, Sendable {
    /// The caller's context from the highest-precedence valid header, or nil when there is none.
    public var context: TraceContext?
    /// Names of trace headers that were present but invalid, in precedence order, each at most once.
    ///
    /// Every present header is checked, also those below the one that won, so a caller that sends one good and
    /// one broken format still shows up. A B3 sampling-only value (`b3: 0`) is valid and not listed.
    public var malformed: [String]

    /// Creates an extraction result.
    public init(context: TraceContext?, malformed: [String] = []) {
        self.context = context
        self.malformed = malformed
    }
}

/// Finds the caller's trace context in gRPC request metadata.
///
/// Precedence follows what GitLab clients send, newest first: `traceparent` (OpenTelemetry LabKit), then
/// `uber-trace-id` (OpenTracing LabKit), then B3 (`b3`, then `x-b3-*`). A malformed header falls through to the
/// next format. Never throws: bad input only shows up in ``TraceContextExtraction/malformed``.
public enum TraceContextExtractor {
    /// The trace headers, by name.
    private enum Header: Sendable {
        case traceparent, tracestate, jaeger, b3Single, b3Multi
    }

    private static let headers = NameTable<Header>([
        TraceparentParser.headerName: .traceparent,
        TraceparentParser.stateHeaderName: .tracestate,
        JaegerParser.headerName: .jaeger,
        B3Parser.singleHeaderName: .b3Single,
        B3Parser.traceIDHeaderName: .b3Multi,
        B3Parser.spanIDHeaderName: .b3Multi,
        B3Parser.parentSpanIDHeaderName: .b3Multi,
        B3Parser.sampledHeaderName: .b3Multi,
        B3Parser.flagsHeaderName: .b3Multi,
    ])

    /// Extracts the caller's context.
    ///
    /// - Parameter metadata: request metadata in arrival order, names already lower-case (as HTTP/2 sends them).
    /// - Returns: the context and the malformed header names. Repeated `traceparent` headers are malformed
    ///   (W3C §3.2: the caller is confused, start afresh); repeated `tracestate` headers are joined with `,`
    ///   (W3C §3.3); for the other formats the first value wins. Jaeger `uberctx-*` baggage is attached only to a
    ///   context taken from `uber-trace-id`.
    public static func extract(from metadata: [(name: String, value: String)]) -> TraceContextExtraction {
        extract(from: metadata.map { HeaderField(name: $0.name, value: $0.value) })
    }

    /// Extracts the caller's context from a call's request metadata, as the call assembler keeps it (see the other
    /// overload).
    public static func extract(from metadata: [HeaderField]) -> TraceContextExtraction {
        var traceparents: [String] = []
        var tracestates: [String] = []
        var uberTraceID: String?
        var b3Single: String?
        var hasB3Multi = false
        var hasBaggage = false
        for field in metadata {
            let (name, value) = (field.name, field.value)
            switch headers[name] {
            case .traceparent: traceparents.append(value)
            case .tracestate: tracestates.append(value)
            case .jaeger: if uberTraceID == nil { uberTraceID = value }
            case .b3Single: if b3Single == nil { b3Single = value }
            case .b3Multi: hasB3Multi = true
            case nil: if name.hasPrefix(JaegerParser.baggagePrefix) { hasBaggage = true }
            }
        }

        var context: TraceContext?
        var malformed: [String] = []
        func offer(_ candidate: TraceContext?, orBlame header: String) {
            guard let candidate else {
                malformed.append(header)
                return
            }
            if context == nil { context = candidate }
        }

        if !traceparents.isEmpty {
            let state = tracestates.isEmpty ? nil : tracestates.joined(separator: ",")
            let parsed = traceparents.count == 1 ? TraceparentParser.parse(traceparents[0], tracestate: state) : nil
            offer(parsed, orBlame: TraceparentParser.headerName)
        }
        if let uberTraceID {
            let parsed = JaegerParser.parse(uberTraceID).map { jaeger in
                var jaeger = jaeger
                if hasBaggage { jaeger.baggage = JaegerParser.baggage(from: pairs(metadata)) }
                return jaeger
            }
            offer(parsed, orBlame: JaegerParser.headerName)
        }
        var b3Results: [B3Parser.Result] = []
        if let b3Single { b3Results.append(B3Parser.parse(single: b3Single)) }
        if hasB3Multi, let multi = B3Parser.parse(B3Parser.MultiHeaders(metadata: pairs(metadata))) {
            b3Results.append(multi)
        }
        for result in b3Results {
            switch result {
            case .context(let b3): offer(b3, orBlame: B3Parser.singleHeaderName)
            case .samplingOnly: break
            case .invalid(let header): offer(nil, orBlame: header)
            }
        }
        return TraceContextExtraction(context: context, malformed: malformed)
    }

    /// The fields as name–value pairs, for the parsers of the rarer headers.
    private static func pairs(_ metadata: [HeaderField]) -> [(name: String, value: String)] {
        metadata.map { (name: $0.name, value: $0.value) }
    }
}
