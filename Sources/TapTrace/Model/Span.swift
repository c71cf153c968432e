/// A 128-bit trace id, as W3C Trace Context and OpenTelemetry define it.
public struct TraceID: Hashable, Sendable, CustomStringConvertible {
    /// The first 8 bytes (the first 16 hex digits).
    public var high: UInt64
    /// The last 8 bytes (the last 16 hex digits).
    public var low: UInt64

    /// An id from its two halves.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// True when at least one bit is set; the all-zero id is invalid everywhere.
    public var isValid: Bool { high != 0 || low != 0 }

    /// 32 lower-case hex digits.
    public var description: String { HexFormat.hex(high) + HexFormat.hex(low) }

    /// A fresh random id.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> TraceID {
        var id = TraceID(high: generator.next(), low: generator.next())
        if !id.isValid { id.low = 1 }
        return id
    }
}

/// A 64-bit span id.
public struct SpanID: Hashable, Sendable, CustomStringConvertible {
    /// The id's bits.
    public var value: UInt64

    /// An id from its bits.
    public init(_ value: UInt64) { self.value = value }

    /// True when non-zero; the zero id is invalid everywhere.
    public var isValid: Bool { value != 0 }

    /// 16 lower-case hex digits.
    public var description: String { HexFormat.hex(value) }

    /// A fresh random, non-zero id.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> SpanID {
        let v: UInt64 = generator.next()
        return SpanID(v == 0 ? 1 : v)
    }
}

/// The caller's trace context, taken from request metadata.
public struct TraceContext: Hashable, Sendable {
    /// Which header the context came from.
    public enum Format: String, Sendable {
        /// W3C Trace Context `traceparent`.
        case w3c = "traceparent"
        /// Jaeger `uber-trace-id`.
        case jaeger = "uber-trace-id"
        /// Zipkin B3, single or multi header.
        case b3 = "b3"
    }

    /// The trace the caller belongs to.
    public var traceID: TraceID
    /// The caller's span: the parent of the span the tap records.
    public var parentSpanID: SpanID?
    /// Whether the caller sampled the trace.
    public var sampled: Bool
    /// Which header the context came from.
    public var format: Format
    /// W3C `tracestate`, kept verbatim.
    public var traceState: String?
    /// Jaeger `uberctx-*` baggage, keyed without the prefix.
    public var baggage: [String: String]

    /// A context from its parts.
    public init(
        traceID: TraceID,
        parentSpanID: SpanID?,
        sampled: Bool,
        format: Format,
        traceState: String? = nil,
        baggage: [String: String] = [:]
    ) {
        self.traceID = traceID
        self.parentSpanID = parentSpanID
        self.sampled = sampled
        self.format = format
        self.traceState = traceState
        self.baggage = baggage
    }
}

/// A value of a span attribute; the JSON log and OTLP both map these one to one.
public enum AttributeValue: Hashable, Sendable {
    /// A string.
    case string(String)
    /// A signed 64-bit integer.
    case int(Int64)
    /// A double; non-finite values are written as strings in JSON.
    case double(Double)
    /// A boolean.
    case bool(Bool)
    /// A list of strings.
    case stringArray([String])
}

/// One finished span, the unit every sink receives.
public struct Span: Sendable, Equatable {
    /// OpenTelemetry span kind; the raw value is the span log's spelling.
    public enum Kind: String, Sendable {
        case server, client, `internal`
    }

    /// OpenTelemetry status code; the raw value is the span log's spelling.
    public enum StatusCode: String, Sendable {
        case ok, error, unset
    }

    /// The span's outcome.
    public struct Status: Sendable, Equatable {
        /// Whether the operation succeeded.
        public var code: StatusCode
        /// What went wrong, for an error.
        public var message: String?

        /// A status from its parts.
        public init(code: StatusCode, message: String? = nil) {
            self.code = code
            self.message = message
        }

        /// Success, without a message.
        public static let ok = Status(code: .ok)
    }

    /// A timestamped event inside a span (OpenTelemetry span event).
    public struct Event: Sendable, Equatable {
        /// What happened.
        public var name: String
        /// When, in nanoseconds since the Unix epoch.
        public var timeUnixNano: UInt64
        /// Details of the event.
        public var attributes: SpanAttributes

        /// An event from its parts.
        public init(name: String, timeUnixNano: UInt64, attributes: SpanAttributes = [:]) {
            self.name = name
            self.timeUnixNano = timeUnixNano
            self.attributes = attributes
        }
    }

    /// The trace this span belongs to.
    public var traceID: TraceID
    /// This span's own id.
    public var spanID: SpanID
    /// The caller's span, or nil for a root span.
    public var parentSpanID: SpanID?
    /// For an RPC span, `<package.Service>/<Method>`.
    public var name: String
    /// Server for RPCs the tap observed.
    public var kind: Kind
    /// Start, in nanoseconds since the Unix epoch.
    public var startTimeUnixNano: UInt64
    /// End, in nanoseconds since the Unix epoch.
    public var endTimeUnixNano: UInt64
    /// The outcome.
    public var status: Status
    /// Flat attributes, OpenTelemetry keys where they exist.
    public var attributes: SpanAttributes
    /// Timestamped events inside the span.
    public var events: [Event]
    /// Whether the caller asked for this trace to be sampled (kept from its context).
    public var sampled: Bool
    /// The caller's W3C `tracestate`, passed on verbatim to OTLP (`trace_state`).
    public var traceState: String?

    /// A span from its parts.
    public init(
        traceID: TraceID,
        spanID: SpanID,
        parentSpanID: SpanID? = nil,
        name: String,
        kind: Kind,
        startTimeUnixNano: UInt64,
        endTimeUnixNano: UInt64,
        status: Status = .ok,
        attributes: SpanAttributes = [:],
        events: [Event] = [],
        sampled: Bool = true,
        traceState: String? = nil
    ) {
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.name = name
        self.kind = kind
        self.startTimeUnixNano = startTimeUnixNano
        self.endTimeUnixNano = endTimeUnixNano
        self.status = status
        self.attributes = attributes
        self.events = events
        self.sampled = sampled
        self.traceState = traceState
    }
}

/// Lower-case fixed-width hex formatting without Foundation.
public enum HexFormat {
    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// 16 hex digits for a 64-bit value.
    public static func hex(_ value: UInt64) -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        var v = value
        for i in stride(from: 15, through: 0, by: -1) {
            bytes[i] = digits[Int(v & 0xF)]
            v >>= 4
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
