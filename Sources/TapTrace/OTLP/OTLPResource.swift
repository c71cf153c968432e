/// The version of gitaly-tap, reported as `service.version` and as the instrumentation scope's version.
public enum GitalyTapVersion {
    /// Semantic version of this build.
    public static let current = "0.1.0"
}

/// Who produced the spans: the OTLP `Resource` and `InstrumentationScope` written once per export request.
///
/// Jaeger shows `service.name` as the service of every span; `host.name` and `service.version` appear in the
/// process tags, so a user can tell two taps apart.
public struct OTLPResource: Sendable, Equatable {
    /// `service.name`: the service every span is listed under.
    public var serviceName: String
    /// `service.version`.
    public var serviceVersion: String
    /// `host.name`, or nil to leave it out.
    public var hostName: String?
    /// Further resource attributes (for example `deployment.environment.name`).
    public var extraAttributes: [String: AttributeValue]
    /// `InstrumentationScope.name`.
    public var scopeName: String
    /// `InstrumentationScope.version`.
    public var scopeVersion: String

    /// The default service name when `--service-name` is not given.
    public static let defaultServiceName = "gitaly-tap"

    /// A resource from its parts; everything but the host has a default.
    public init(
        serviceName: String = OTLPResource.defaultServiceName,
        serviceVersion: String = GitalyTapVersion.current,
        hostName: String? = nil,
        extraAttributes: [String: AttributeValue] = [:],
        scopeName: String = "gitaly-tap",
        scopeVersion: String = GitalyTapVersion.current
    ) {
        self.serviceName = serviceName
        self.serviceVersion = serviceVersion
        self.hostName = hostName
        self.extraAttributes = extraAttributes
        self.scopeName = scopeName
        self.scopeVersion = scopeVersion
    }

    /// The resource attributes in the order they are written: the well-known keys first, then the others sorted.
    public var attributes: [(key: String, value: AttributeValue)] {
        var list: [(key: String, value: AttributeValue)] = [("service.name", .string(serviceName))]
        list.append(("service.version", .string(serviceVersion)))
        if let hostName { list.append(("host.name", .string(hostName))) }
        let known: Set<String> = ["service.name", "service.version", "host.name"]
        for key in extraAttributes.keys.sorted() where !known.contains(key) {
            // Force-unwrap is safe: `key` came from this dictionary's keys.
            list.append((key, extraAttributes[key]!))
        }
        return list
    }
}

/// OTLP enum numbers (opentelemetry-proto `trace.proto`), shared by both encodings: OTLP/JSON writes enums as integers.
enum OTLPEnums {
    /// `Span.SpanKind`: INTERNAL 1, SERVER 2, CLIENT 3.
    static func kind(_ kind: Span.Kind) -> UInt64 {
        switch kind {
        case .internal: return 1
        case .server: return 2
        case .client: return 3
        }
    }

    /// `Status.StatusCode`: UNSET 0, OK 1, ERROR 2.
    static func statusCode(_ code: Span.StatusCode) -> UInt64 {
        switch code {
        case .unset: return 0
        case .ok: return 1
        case .error: return 2
        }
    }

    /// `Span.flags`: the low byte carries the W3C trace flags; only the sampled bit (0x01) is known to the tap.
    static func flags(_ span: Span) -> UInt32 {
        span.sampled ? 0x01 : 0x00
    }
}
